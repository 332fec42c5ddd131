"""E2E NLG and text-classification data: reading, converting, tokenising, partitioning, synthetic defaults.

- ``tokenizer``: the GPT-2 BPE tokenizer, offline (``load_bpe`` for the runtime,
  ``load_gpt2_tokenizer`` as transformers' fast tokenizer, ``EOS_ID``).
- ``ref_tokenize``: the two word-tokenisation styles of the lora-e2e text files.
- ``e2e``: CSV / text-format reading, the CSV -> ``context||completion`` converter, grouping by MR.
- ``dataset``: encoding, batches (``input_ids``/``targets``/``loss_mask``), the seeded loader.
- ``partition``: iid / contiguous / dirichlet (over MR attributes or labels) / pathological
  client splits and their description.
- ``classify``: ``text,label`` CSV files (BANKING77), a synthetic intent set, tokenisation with
  a model directory's ``tokenizer.json``, batches (``input_ids``/``targets`` (B,)/``loss_mask``).
- ``synthetic``: a seeded E2E-like dataset for offline runs.
- ``locate``: finding the data (flag, ``SPLITLORA_DATA``, cache) and ``load_splits``.

Submodules are imported explicitly (this package imports nothing), so reading the data
does not pull in torch or transformers.
"""
