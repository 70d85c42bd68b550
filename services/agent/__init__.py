"""Built-in agents: clients of the HTTP API, like any outside agent (compose profile `agents`).

    autoresearch-agent    llm_agent.py: an LLM loop over any OpenAI-compatible chat-completions API
    autoresearch-search   search.py: the control arm, random local search over the UPPER_CASE
                          hyperparameters of the best train.py

Shared: loop.py (read the research state, submit, wait for the outcome), llm.py (the chat client),
prompt.py (what the LLM is told and how its answer is read).

    AgentError        an agent cannot go on this iteration
    ├── LlmError      the chat-completions endpoint failed or answered nonsense (llm.py)
    └── NoDiff        the LLM's answer holds no usable diff (prompt.py)
"""


class AgentError(Exception):
    """An iteration of an agent failed; the message is fed back to it and logged."""
