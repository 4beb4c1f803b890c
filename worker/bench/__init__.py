"""``voicestack bench inference``: a load benchmark of the inference server.

Synthetic callers (real speech, realistic turn timing) drive the server over its stream
protocol; the run compares the deadline-aware scheduler with the serial baseline, reports
per-stage latency percentiles, throughput, refusals and capacity, and writes JSON and a plot.

Modules: :mod:`~worker.bench.timeline` (seeded call plans), :mod:`~worker.bench.call` (one
caller), :mod:`~worker.bench.loadgen` (one point), :mod:`~worker.bench.capacity` (the sweep),
:mod:`~worker.bench.stats`, :mod:`~worker.bench.results`, :mod:`~worker.bench.report`,
:mod:`~worker.bench.server_proc`, :mod:`~worker.bench.runner`, :mod:`~worker.bench.cli`.
"""
