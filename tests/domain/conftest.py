"""Fixtures of the domain tests, on top of tests/conftest.py's `api` (one real server per backend):
fresh tenants (each with its own tenant key and HTTP client), a service key, an admin client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from harness import Api

from .helpers import Tenant, ok


@pytest.fixture
def admin(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api.base_url, headers={"Authorization": f"Bearer {api.admin_key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def make_tenant(api: Api) -> Iterator[Callable[[], Tenant]]:
    """Makes fresh tenants (organization, tenant, tenant key) through the admin API."""
    made: list[Tenant] = []

    def make() -> Tenant:
        created = api.new_tenant()
        client = httpx.Client(
            base_url=api.base_url, headers={"Authorization": f"Bearer {created.key}"}, timeout=60
        )
        tenant = Tenant(created.id, created.key, created.key_id, api.base_url, client)
        made.append(tenant)
        return tenant

    yield make
    for tenant in made:
        tenant.client.close()


@pytest.fixture
def tenant(make_tenant: Callable[[], Tenant]) -> Tenant:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Callable[[], Tenant]) -> Tenant:
    return make_tenant()


@pytest.fixture
def service_key(admin: httpx.Client) -> str:
    created = ok(admin.post("/v1/admin/keys", json={"kind": "service", "name": "tests-service"}), 201)
    key: str = created["key"]
    return key
