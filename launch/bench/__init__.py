"""Benchmarks and the reports built from them.

- ``latency`` (``python -m launch.bench``): the latency report, CenLoRA, FedLoRA and SplitLoRA
  side by side; ``report``, ``report_build``, ``report_md``, ``report_plots``: its figures;
  ``netsim``: the link model; ``links`` (``--netlab``) and ``netcheck``: the same jobs over
  emulated links (``launch/netlab.py``).
- ``serving``: batched against sequential serving; ``clients``: many logical clients per rank.
- ``decode``, ``metrics``: the decoder and the E2E scorer; ``split_decode``, ``decode_serving``:
  decoding through the split; ``encoder``: the encoder's step against transformers + peft.
"""
