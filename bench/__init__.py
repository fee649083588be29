"""clawproxy's end-to-end benchmark: ``python -m bench`` (see bench/README.md).

Modules: ``run`` (the command: the matrix of loads and paths, in turns), ``services``
(starting the simulator, nginx and the gateway), ``proctree`` (CPU and RSS of a process
tree from /proc), ``loadgen`` (the streaming load generator, its own process),
``httpwire`` (its sans-IO HTTP/1.1 response and token reader), ``simproc`` (the simulator
process), ``report`` (table, RESULTS.md, chart), ``profile`` (py-spy on the gateway),
``limits`` (workers never exceed max_concurrent). ``reframe_micro.py`` is a separate
micro-benchmark of the re-framer alone.
"""
