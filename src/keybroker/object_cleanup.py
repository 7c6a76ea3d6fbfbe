"""Deleting what an app made: the owner's "Revoke and delete its files" on the settings page.

Off the hot path, so it uses httpx (DESIGN.md). The owner's key is opened from the vault while
the owner is signed in; each object the grant owns (proxy/ownership.py) is deleted upstream
and its record dropped. Batches and fine-tuning jobs cannot be deleted (OpenAI keeps them);
their output files, once the app has read them, are files of the grant and are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy import Engine, delete
from sqlmodel import Session, col

from keybroker.models import OwnedObject
from keybroker.proxy.ownership import Ownership

# What deletes each kind, as the API reference says (DELETE /v1/files/{file_id}, ...).
DELETE_PATHS = {
    "file": "/files/{}",
    "vector_store": "/vector_stores/{}",
    "response": "/responses/{}",
    "chat.completion": "/chat/completions/{}",
    "conversation": "/conversations/{}",
}


@dataclass(frozen=True)
class Cleanup:
    deleted: int
    failed: int
    kept: int  # objects OpenAI does not delete (batches, fine-tuning jobs, uploads)


def delete_objects(
    engine: Engine, grant_id: str, key: str, *, upstream_url: str, timeout: float
) -> Cleanup:
    """Delete every deletable object of the grant upstream; gone (200 or 404) means done."""
    owned = Ownership(engine).of_grant(grant_id)
    done: list[str] = []
    failed = kept = 0
    with httpx.Client(
        base_url=upstream_url,
        headers={"authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(timeout),
    ) as client:
        for kind, object_id in owned:
            path = DELETE_PATHS.get(kind)
            if path is None:
                kept += 1
                continue
            try:
                response = client.delete(path.format(object_id))
            except httpx.HTTPError:
                failed += 1
                continue
            if response.status_code in (200, 404):
                done.append(object_id)
            else:
                failed += 1
    if done:
        with Session(engine) as db:
            db.execute(
                delete(OwnedObject).where(
                    col(OwnedObject.grant_id) == grant_id, col(OwnedObject.object_id).in_(done)
                )
            )
            db.commit()
    return Cleanup(len(done), failed, kept)
