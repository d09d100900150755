"""Widgets, one per file, each with its DEFAULT_CSS and state classes set from Python.

Files:
- transcript.py: Transcript, the scrolling conversation, pinned to the bottom.
- user_message.py: UserMessage, a prompt (`-queued` while waiting for its turn).
- assistant_message.py: AssistantMessage, streamed Markdown (`-streaming`).
- tool_call.py: ToolCallView, a tool call's status, diff and collapsible output.
- subagent.py: SubagentView, a sub-agent under its task call: collapsible, tokens shared/computed.
- diff_view.py: DiffView, a diff unified or side by side (`-split`).
- notice.py: Notice, a note, error or command output (`-note`, `-error`, `-info`).
- prompt_input.py: PromptInput, the multi-line prompt with history.
- progress_row.py: ProgressRow, one kind of long work with rate and ETA.
- status_bar.py: StatusBar, model, context, cache reuse, speed, KV per tier.
"""
