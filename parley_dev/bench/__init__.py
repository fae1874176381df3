"""``parley bench``: load the local stack and compare it with a bare gRPC baseline.

Modules: ``args`` (the subcommand, cheap to import), ``runner`` (orchestration),
``baseline`` (the bare gRPC server and its load), ``population`` and
``streams`` (simulated users and their Connect streams), ``phases`` (send,
deliver, fetch), ``load`` (closed- and open-loop drivers), ``stats`` and
``procstat`` (pure measurement helpers), ``report`` (JSON and table),
``profile`` and ``flamegraph`` (py-spy).
"""
