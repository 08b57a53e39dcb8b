"""For people who inspect what changed: per-layer facts (`layers`), node matching
(`matching`), the diff (`diff`, `attribution`), and reports as text, JSON and HTML
(`report`, `text`, `html`)."""
