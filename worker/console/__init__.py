"""``voicestack console``: the call center's web console (live calls, history, one call).

Served by aiohttp from :mod:`worker.console.app`; live data comes from the agents over Redis
(:mod:`worker.records.live`), history from the call record store
(:mod:`worker.records.store`). Pages are server-rendered Jinja2 with one small script and one
style sheet from ``static/``: no build step, no CDN, works offline.
"""
