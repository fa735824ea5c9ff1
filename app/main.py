"""tda-workbench UI: ``streamlit run app/main.py`` (thin: sidebar settings and page routing).

The default model is the embedded Gemma 3 270M; ``TDA_APP_MODEL=tiny-llama`` picks another default
(tests). Pages are ``app/page_*.py``; shared state (cached model, captures) in :mod:`app.state`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that pages can `from app import state`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

st.set_page_config(page_title="tda-workbench", page_icon="🧠", layout="wide")
state.apply_threads()

HERE = Path(__file__).resolve().parent
# Page 1 is served at "/" (Streamlit gives the default page no path of its own); a hidden page at
# /inertia sends a link or bookmark of that path to it instead of "Page not found".
HOME = st.Page(HERE / "page_inertia.py", title="1 · Inertia explorer", url_path="inertia-explorer", default=True)


def _to_home() -> None:
    st.switch_page(HOME)


PAGES = [
    HOME,
    st.Page(HERE / "page_masks.py", title="2 · Masks", url_path="masks"),
    st.Page(HERE / "page_samples.py", title="3 · 13 samples", url_path="samples"),
    st.Page(HERE / "page_recall.py", title="4 · Recall", url_path="recall"),
    st.Page(HERE / "page_generate.py", title="5 · Generate", url_path="generate"),
    st.Page(HERE / "page_neuron.py", title="6 · Neuron", url_path="neuron"),
    st.Page(_to_home, title="1 · Inertia explorer", url_path="inertia", visibility="hidden"),
]

st.session_state["settings"] = state.sidebar()
page = st.navigation(PAGES, position="sidebar")
st.sidebar.caption(
    "Reproduces *First Activations Matter* (TDA, arXiv 2408.11393). "
    f"Prompts are limited to {state.MAX_TOKENS} tokens."
)
try:
    page.run()
except Exception as e:  # st.stop/st.rerun are BaseExceptions and pass through
    # Library errors the user can cause are caught on the pages; anything else still gets one
    # clear line instead of a traceback, and the sidebar and other pages keep working.
    st.error(f"Unexpected error on this page: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
finally:  # st.stop/st.rerun too: what this run freed goes back to the system (app.state.release_free_memory)
    state.release_free_memory()
    try:  # the embedded model's next one-time jobs, once its first page has shown (also on a stopped page)
        state.start_background_jobs()
    except Exception:  # noqa: BLE001 - never in the way of the page
        pass
