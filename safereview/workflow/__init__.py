"""Review workflow: sign-in, access policies, queue and annotations (no Streamlit)."""
