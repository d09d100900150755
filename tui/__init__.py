"""The Textual app: screens, widgets and styles. Talks to `agent/` only."""
