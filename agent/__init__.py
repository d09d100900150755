"""The agent: the loop, the context layout, tool-call parsing, tools, permissions.

Files:
- events.py: the ops front ends submit and the events they receive (dataclasses).
- handle.py: AgentHandle, the one interface between the core and every front end.
- session.py: AgentSession, a worker thread running the loop, recording its events to the store.
- history.py: a saved session read back: its messages and earlier turns from the recorded events.
- loop.py: AgentLoop, one user turn: append, generate, parse, dispatch tools, record.
- subagents.py: SubagentHost, the session's side of the task tool: start, record, resume.
- subagent.py: one sub-agent: its forked conversation, loop and session, events nested.
- subagent_pool.py: sub-agents of one reply side by side (at most 4), by where the model runs.
- subagent_engine.py: EngineHub, one engine serving conversations on several threads.
- context.py: the stable-first layout: instructions, tool schemas, the repository.
- repo_snapshot.py: the repository as the model first sees it, within a token budget.
- repo_order.py: what the snapshot takes first (README, task files, git history, metadata last).
- repo_files.py: listing and classifying files, reading them without following links.
- repo_listing.py: the snapshot's list of files left out, summarised to fit its budget.
- external_changes.py: files changed outside the agent, appended as notes with the diff.
- line_mutations.py: likely one-place repairs of a line of code, for weak models' edits.
- tool_calls.py: parsing Hermes and Llama 3.1 tool calls; malformed calls become errors.
- harmony.py: gpt-oss's harmony messages: channels, the final text, functions.NAME calls.
- deepseek_tool_calls.py: DeepSeek's DSML and V3 / V3.1 call markers, GLM-4.7's arg pairs.
- workspace.py: the sandbox: paths outside the repository, `.git/` and hook writes refused;
  reads and writes confined by descriptor (O_NOFOLLOW walk), writes via temp file + rename.
- permissions.py: modes and allow/deny rules; `may_read` for files tools read on their own.
- shell_analysis.py: what a shell line runs, read with a bash grammar (bashlex), for rules.
- checkpoint.py: worktree checkpoints per turn under a private ref namespace; restore, undo.
- backends/: model backends (local runtime, OpenAI-compatible server, scripted).
- tools/: the tools the model calls.
"""
