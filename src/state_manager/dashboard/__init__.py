"""The analytics dashboard: one HTML page, its stylesheet and script, served from this package's files."""
