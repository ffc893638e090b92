"""A hub process in miniature for crash tests: drives one Gen3KubeSpawner start or stop and can be SIGKILLed at a named step.

Usage: python -m tests.support.spawn_child CONFIG.json. The config names the kubeconfig,
namespace, Fence stand-in, user, access token, the action (start or stop), the spawner state to
load, the step to freeze at (key, secret, pvc, pod, stopped) and where to write the state a
hub would store. At that step it prints `FROZEN <step>` and waits to be killed, so nothing
after it (cleanup included) ever runs: exactly what a hub killed there leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import kubernetes_asyncio.config as k8s_config


def say(text: str) -> None:
    print(text, flush=True)


async def freeze(step: str) -> None:
    say(f"FROZEN {step}")
    await asyncio.Event().wait()


async def main(cfg: dict[str, Any]) -> None:
    import kubernetes_asyncio.config.kube_config as kc

    from gen3workspace.hub.auth import Gen3OAuthenticator
    from gen3workspace.spawner.kube import Gen3KubeSpawner
    from tests.support.fakes import FakeUser, fake_hub

    kc.KUBE_CONFIG_DEFAULT_LOCATION = cfg["kubeconfig"]
    await k8s_config.load_kube_config(config_file=cfg["kubeconfig"])
    auth = Gen3OAuthenticator(commons_url=cfg["fence_url"], client_id=cfg["client_id"], client_secret=cfg["client_secret"])
    user = FakeUser(cfg["user"], cfg.get("groups", []), auth_state={"access_token": cfg["access_token"], "oauth_user": {"authz": {}}})
    spawner = Gen3KubeSpawner(user=user, hub=fake_hub(), authenticator=auth, namespace=cfg["namespace"], cmd=cfg["cmd"], start_timeout=60)
    spawner.load_state(cfg.get("state") or {})
    at = cfg.get("freeze_at")

    async def after(step: str, coro: Any) -> Any:
        result = await coro
        if at == step:
            await freeze(step)
        return result

    mint, write, pvc, pod = spawner.mint_api_key, spawner._write_credentials_secret, spawner._make_create_pvc_request, spawner._make_create_pod_request
    spawner.mint_api_key = lambda: after("key", mint())  # type: ignore[method-assign]
    spawner._write_credentials_secret = lambda key: after("secret", write(key))  # type: ignore[method-assign]
    spawner._make_create_pvc_request = lambda *a: after("pvc", pvc(*a))  # type: ignore[method-assign]
    spawner._make_create_pod_request = lambda *a: after("pod", pod(*a))  # type: ignore[method-assign]
    if cfg["action"] == "start":
        spawner.user_options = {"flavor": cfg.get("flavor", "python-small")}
        await spawner.start()
        Path(cfg["state_out"]).write_text(json.dumps(spawner.get_state()))
        say("STARTED")
    else:
        await spawner.stop()
        if at == "stopped":
            await freeze("stopped")
        await spawner.run_post_stop_hook()
        say("STOPPED")


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
