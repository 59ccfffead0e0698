"""The model family: its registry (``localaug/models/*.toml``), exact prompt formats and prompt
styles. Text only: nothing here loads llama.cpp."""
