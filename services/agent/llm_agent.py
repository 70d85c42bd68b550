"""`autoresearch-agent`: an LLM research agent over any OpenAI-compatible chat-completions endpoint.

Each iteration: read program.md, the best train.py and recent results; ask the model for one idea as
a unified diff; submit it with the program.md version it was told; wait for the outcome; remember it
for the next prompt. Settings: AR_AGENT_LLM_BASE_URL, AR_AGENT_LLM_MODEL, AR_AGENT_LLM_API_KEY,
AR_AGENT_CONTROLLER_URL, AR_AGENT_TOKEN, AR_AGENT_MAX_ITERATIONS (services/settings.py).
"""

import logging
from dataclasses import dataclass, field

from services.agent import AgentError, prompt
from services.agent.llm import ChatClient
from services.agent.loop import (
    NOT_SUBMITTED,
    Clock,
    Outcome,
    agent_token,
    log_outcome,
    read_research,
    submit_and_wait,
    wait_ready,
)
from services.cli.client import ApiClient
from services.logs import configure_logging
from services.settings import AgentSettings

log = logging.getLogger(__name__)

DEFAULT_NAME = "llm-agent"


@dataclass
class LlmAgent:
    client: ApiClient
    llm: ChatClient
    settings: AgentSettings
    clock: Clock = field(default_factory=Clock)
    memory: list[Outcome] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.agent_name or f"{DEFAULT_NAME}:{self.llm.model}"

    def run(self) -> list[Outcome]:
        wait_ready(self.client, self.clock)
        for iteration in range(1, self.settings.agent_max_iterations + 1):
            outcome = self.step()
            self.memory.append(outcome)
            log_outcome(iteration, outcome)
        return self.memory

    def step(self) -> Outcome:
        research = read_research(self.client, self.settings.agent_recent_results)
        try:
            answer = self.llm.complete(prompt.messages(research, self.memory))
            idea = prompt.parse_answer(answer, research.train_py)
        except AgentError as exc:
            self.clock.sleep(self.settings.agent_poll_s)  # an endpoint in trouble is not hammered
            return Outcome("(no proposal)", NOT_SUBMITTED, str(exc))
        body = {
            "title": idea.title,
            "description": idea.description,
            "agent": self.name,
            "program_version": research.program_version,
            "base_commit": research.best_commit,
            "diff": idea.diff,
        }
        return submit_and_wait(self.client, body, self.settings, self.clock)


def main() -> int:
    configure_logging()
    settings = AgentSettings()
    if not settings.agent_llm_model:
        raise SystemExit("set AR_AGENT_LLM_MODEL (and AR_AGENT_LLM_BASE_URL, AR_AGENT_LLM_API_KEY)")
    key = settings.agent_llm_api_key
    llm = ChatClient(
        settings.agent_llm_base_url,
        settings.agent_llm_model,
        None if key is None else key.get_secret_value(),
        temperature=settings.agent_llm_temperature,
        max_tokens=settings.agent_llm_max_tokens,
        timeout_s=settings.agent_llm_timeout_s,
    )
    with ApiClient(settings.agent_controller_url, agent_token(settings)) as client, llm:
        outcomes = LlmAgent(client, llm, settings).run()
    log.info("done", extra={"iterations": len(outcomes), "merged": sum(o.merged for o in outcomes)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
