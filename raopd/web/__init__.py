"""The speaker's web page and HTTP API (/api/v1), served on http_port beside the probes.

view.py turns the player state into the API's JSON, events.py streams it to browsers
(Server-Sent Events), api.py holds the endpoints and app.py puts them, the page and the probe
routes into one aiohttp application. The page itself is plain HTML/CSS/JS in static/.
"""
