"""The house side of raopd: what is playing, told to whoever wants to know, and control.

`state` holds the one model of what the receiver is doing (`PlayerState`) and the one place
that turns session events into changes of it (`PlayerTracker`); `fanout` hands each change to
every consumer through its own bounded queue. The consumers: `log` (the "now playing" line),
`metadata_pipe` (shairport-sync's pipe and UDP format, items from `sps`), `mqtt` (shairport-sync's
topics and Home Assistant discovery), `hooks` (commands and webhooks) and, later, the HTTP API.
`dacp` sends remote-control commands back to the sender. `house` wires them to the daemon.
"""
