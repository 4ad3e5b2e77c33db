"""Tools built on raopd's protocol code: an AirPlay 1 sender for tests, benchmarks and users."""
