"""A trained spaCy pipeline plugs in with --nlp-model and adds the entities patterns cannot see.

No model can be downloaded here, so the test builds a small one: a spaCy pipeline whose entity
ruler knows one name, saved to disk and passed by path, exactly as an installed model would be.
The name is one the built-in lexicon cannot know (no listed name, no cue), so what the model
adds is visible.
"""

from __future__ import annotations

import json

import pytest
import spacy

from shadowtape import schema


@pytest.fixture(scope="module")
def name_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": "Qwyrt Zvblex"}])
    path = tmp_path_factory.mktemp("model") / "names"
    nlp.to_disk(path)
    return str(path)


def test_model_entities_are_found_with_a_model(tmp_path, cli, name_model, test_key):
    body = json.dumps(
        {"comment": "Grace Hopper and Qwyrt Zvblex wrote about jane@example.com"}
    ).encode()
    ex = schema.Exchange(
        id="r1",
        session_id="s",
        seq=0,
        started_at=1,
        method="POST",
        path="/notes",
        request_headers=[("Content-Type", "application/json")],
        request_body=body,
    )
    with schema.DatasetWriter(tmp_path / "raw") as writer:
        writer.write_exchanges([ex])
    policy = tmp_path / "p.yaml"
    policy.write_text("detect:\n  entities: [EMAIL_ADDRESS, PERSON, LOCATION]\n")

    without = cli("sanitize", str(tmp_path / "raw"), str(tmp_path / "a"), "--policy", str(policy))
    assert without.exit_code == 0, without.output
    assert "no detector for LOCATION" in without.stderr
    comment = json.loads(next(schema.iter_exchanges(tmp_path / "a")).request_body)["comment"]
    # The lexicon finds the listed name without a model; the unlisted one needs the model.
    assert "Grace Hopper" not in comment and "Qwyrt Zvblex" in comment and "jane@" not in comment

    args = ["--policy", str(policy), "--nlp-model", name_model]
    with_model = cli("sanitize", str(tmp_path / "raw"), str(tmp_path / "b"), *args)
    assert with_model.exit_code == 0, with_model.output
    assert "PERSON 2" in with_model.stdout
    comment = json.loads(next(schema.iter_exchanges(tmp_path / "b")).request_body)["comment"]
    assert "Grace Hopper" not in comment and "Qwyrt" not in comment
    assert comment.endswith(".invalid")
    assert cli("verify", str(tmp_path / "b"), *args).exit_code == 0
