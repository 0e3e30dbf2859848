"""assay's benchmark suite: ``python -m bench`` measures every target of issue 5 as ratios taken
side by side in one run, prints the table and writes bench/RESULTS.md. One module per target."""
