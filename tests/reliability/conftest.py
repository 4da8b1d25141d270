"""The reliability suite (issue 8): load, faults and hostile input against real servers.

Run it alone with `./scripts/test tests/reliability`; `./scripts/test` runs it with everything else. Every
test here uses the fixtures of tests/conftest.py and the processes of tests/harness.py: real PostgreSQL,
Redis and RabbitMQ, real server processes over HTTP, nothing mocked.
"""
