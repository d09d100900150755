"""The Textual app: screens, widgets and styles. Talks to `agent/` only (events in, ops out).

Files:
- app.py: AgentApp, the session controller: handle, event pump worker, commands, quitting.
- info.py: AppInfo, the model and session shown before SessionStarted arrives.
- catalog.py: SessionSummary and the SessionCatalog protocol the session picker uses.
- messages.py: every app-level message, as a dataclass.
- event_pump.py: the worker-thread loop turning handle events into messages (batches tokens).
- turn_queue.py: TurnQueue, what the user sent versus what the agent started (busy, queued).
- history.py: PromptHistory, up/down through earlier prompts.
- commands.py: the slash commands and their parser.
- diff.py: unified diffs parsed into rows, paired for side by side.
- cards.py: the tables /model, /context and a resumed session print into the transcript.
- formatting.py: short forms of token counts, durations and tool arguments.
- demo.py: `python -m tui.demo`, the app on a scripted handle.
- screens/: one screen per file, each with its .tcss (see screens/__init__.py).
- widgets/: one widget per file, each with its DEFAULT_CSS (see widgets/__init__.py).
"""
