"""What each page computes: plain functions over `tda`/`analysis` calls, one module a page.

No Streamlit and no new maths here: every number comes from :mod:`tda` or :mod:`analysis`; these
modules wire their functions together for one prompt so the pages stay thin and
``benchmarks/app_update.py`` can time exactly what a page runs after an edit.
"""
