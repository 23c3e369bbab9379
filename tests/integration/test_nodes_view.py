"""`sm.nodes()`: every registered node with its input / output / secret schemas, what its
execute returns and which Runtime registered it (issue 12.6); `get_graph` gives the
template with retry policy, store config, secret names (never values) and triggers."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel

from exospherehost import (
    BaseNode,
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.secrets import ENV_SECRETS_KEY
from tests.integration.helpers import running


class Ask(BaseNode):
    class Inputs(BaseModel):
        prompt: str
        temperature: float = 0.2

    class Outputs(BaseModel):
        answer: str

    class Secrets(BaseModel):
        api_token: str

    async def execute(self) -> Outputs:
        return self.Outputs(answer=self.inputs.prompt)


async def test_nodes_show_schemas_and_the_graph_its_settings(
    redis_url: str, namespace: str, sm: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SECRETS_KEY, Fernet.generate_key().decode())
    rt = Runtime(namespace=namespace, name="llm", nodes=[Ask], redis_url=redis_url)
    async with running(rt):
        nodes = await sm.nodes()
        await sm.upsert_graph(
            "g",
            [
                GraphNodeModel(
                    node_name="Ask",
                    namespace=namespace,
                    identifier="ask",
                    inputs={"prompt": "${{ store.q }}"},
                )
            ],
            secrets={"api_token": "very-secret"},
            retry_policy=RetryPolicyModel(max_retries=2),
            store_config=StoreConfigModel(default_values={"q": "hi"}),
            triggers=[CronTrigger(expression="0 * * * *")],
        )
        graph = await sm.get_graph("g")
    [(name, ask)] = nodes.items()
    assert name == "Ask"
    assert set(ask["inputs_schema"]["properties"]) == {"prompt", "temperature"}
    assert ask["inputs_schema"]["required"] == ["prompt"]
    assert set(ask["outputs_schema"]["properties"]) == {"answer"}
    assert ask["secrets"] == ["api_token"]
    assert ask["returns"] == "one" and ask["runtime"] == "llm"
    assert isinstance(ask["registered_ms"], int)
    assert graph["retry_policy"]["max_retries"] == 2
    assert graph["store_config"]["default_values"] == {"q": "hi"}
    assert graph["secret_names"] == ["api_token"]
    assert [t["expression"] for t in graph["triggers"]] == ["0 * * * *"]
    assert "very-secret" not in repr(graph)
