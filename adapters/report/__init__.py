"""``medgrit report``: one self-contained HTML page that shows what a dataset holds."""
