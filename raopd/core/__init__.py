"""Sans-I/O protocol core: takes bytes and `now`, returns bytes, values and events.

Nothing in this package opens a socket, starts a thread or reads a clock
(tests/test_sans_io.py enforces it), so a recorded capture replays through
exactly the code the daemon runs.
"""
