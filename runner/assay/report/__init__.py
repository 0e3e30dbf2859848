"""`assay report` and `assay compare`: read a finished run back and show or compare it.

- ``finished``: open a finished run (job manifest or output URI), refuse unfinished or unverifiable ones,
  and read its verified records, per-sample scores and sample images;
- ``overlay``: ground-truth and predicted boxes and masks drawn over an image (PIL);
- ``plots``: the matplotlib figures, as PNG bytes;
- ``html``: the escaping HTML building blocks (every user string goes through them);
- ``page``: the report of one run, assembled from the above into one self-contained HTML file;
- ``compare``: two runs side by side, metric deltas and per-sample regressions, as a JSON-ready dict.

Nothing here writes into a run's output; the report is written where the user asks.
"""
