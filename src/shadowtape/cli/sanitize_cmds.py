"""`shadowtape policy`, `shadowtape sanitize` and `shadowtape verify`: parse, call, print."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from shadowtape.cli.audit_hook import run_facts
from shadowtape.cli.progress import LiveLine
from shadowtape.errors import InputError, KeyMissingError
from shadowtape.keyed import DEFAULT_KEY_ENV, Key
from shadowtape.publish import write_file_atomic
from shadowtape.sanitize.manifest import MANIFEST_NAME, totals_by
from shadowtape.sanitize.pipeline import Progress, SanitizeConfig, sanitize_dataset
from shadowtape.sanitize.policy import default_policy_text, load_policy
from shadowtape.sanitize.verify import verify_dataset

DEFAULT_POLICY_FILE = "shadowtape-policy.yaml"

policy_option = click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    help="Policy file (YAML, or TOML by its .toml suffix) [default: the built-in policy].",
)
nlp_option = click.option(
    "--nlp-model",
    metavar="NAME",
    help="An installed spaCy model (e.g. en_core_web_lg) that finds the PERSON, LOCATION, ... "
    "entities listed in the policy's detect.entities; without one only pattern recognizers run "
    "and nothing is downloaded.",
)


@contextmanager
def _live_progress(verb: str) -> Iterator[Progress]:
    """A progress callback that redraws one terminal line and clears it when done."""
    line = LiveLine()

    def show(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        line.update(f"{verb} {done:,}/{total:,} exchanges ({pct}%)")

    try:
        yield show
    finally:
        line.clear()


@click.group()
def policy() -> None:
    """Write out or check a sanitize policy (what to keep, drop, redact or pseudonymize where).

    \b
    Example:
      shadowtape policy init my-policy.yaml     # the built-in policy, to edit
      shadowtape policy check my-policy.yaml
      shadowtape sanitize raw/ clean/ --policy my-policy.yaml
    """


@policy.command("init")
@click.argument("file", default=DEFAULT_POLICY_FILE, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def policy_init(file: str, force: bool) -> None:
    """Write the built-in policy to FILE (default shadowtape-policy.yaml; - for stdout).

    The file is commented: every action and section is explained where it is used.

    \b
    Example:
      shadowtape policy init my-policy.yaml
    """
    text = default_policy_text()
    if file == "-":
        click.echo(text, nl=False)
        return
    path = Path(file)
    if path.exists() and not force:
        raise InputError(f"{path}: already exists; pass --force to overwrite it")
    write_file_atomic(path, text)
    click.echo(f"wrote {path}: the built-in policy; edit it, then `shadowtape policy check {path}`")


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_check(file: str) -> None:
    """Validate a policy file; exit 2 with the file, line and problem if it is wrong.

    \b
    Example:
      shadowtape policy check my-policy.yaml
    """
    p = load_policy(file)
    sections = {
        "headers": len(p.headers),
        "cookies": len(p.cookies),
        "query": len(p.query),
        "form": len(p.form),
        "json": len(p.json),
        "paths": len(p.paths),
    }
    rules = ", ".join(f"{n} {name}" for name, n in sections.items())
    click.echo(
        f"ok: {file}: {rules} rules; default {p.default.action}; fingerprint {p.fingerprint}"
    )
    click.echo(f"  detects: {', '.join(p.entities) or '(nothing)'}")
    click.echo(f"  key words: {', '.join(c.name for c in p.key_words) or '(none)'}")
    prop = p.propagation
    click.echo(
        "  propagation: "
        + (f"on (at most {prop.max_literals:,} values)" if prop.enabled else "off")
    )


def _load_key(key_file: str | None, key_env: str, ephemeral: bool) -> Key:
    try:
        return Key.load(key_file=key_file, env=key_env, ephemeral=ephemeral)
    except KeyMissingError as exc:
        if key_file is not None:
            raise
        raise KeyMissingError(
            f"{exc}; or pass --ephemeral-key for a one-off run whose pseudonyms match nothing else"
        ) from None


@click.command()
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("dst", metavar="OUT", type=click.Path())
@policy_option
@click.option(
    "--key-env",
    default=DEFAULT_KEY_ENV,
    show_default=True,
    metavar="NAME",
    help="Environment variable that holds the pseudonym key.",
)
@click.option("--key-file", type=click.Path(dir_okay=False), help="Read the key from this file.")
@click.option(
    "--ephemeral-key",
    is_flag=True,
    help="With no key given, use a random one: consistent within this run only.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes; row groups are shared among them, the output is the same for any "
    "count.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: scrub on a Ray cluster with --workers actors (needs shadowtape[ray]); the "
    "output is byte-identical to the local engine's.",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="With --engine ray: the cluster (ray://HOST:10001 or HOST:6379) [default: "
    "$RAY_ADDRESS, else a local Ray instance].",
)
@nlp_option
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def sanitize(
    src: str,
    dst: str,
    policy_path: str | None,
    key_env: str,
    key_file: str | None,
    ephemeral_key: bool,
    workers: int,
    engine: str,
    address: str | None,
    nlp_model: str | None,
    overwrite: bool,
) -> None:
    """Scrub a captured dataset IN into OUT, safe to take to staging.

    Every value is handled by the policy: credentials become keyed tokens, personal data
    becomes keyed pseudonyms that keep their format (an email stays an email, a card a
    Luhn-valid card), and what no rule names is scanned with Presidio. The same value gets
    the same pseudonym everywhere, so recorded sessions still replay. Bodies that cannot be
    decoded are dropped (fail-closed) and counted. OUT appears only when complete, with a
    manifest of counts (never values) in OUT/_manifest.json.

    \b
    Example:
      export SHADOWTAPE_KEY=$(openssl rand -hex 32)   # keep it: same key, same pseudonyms
      shadowtape sanitize raw/ clean/ --workers 2
      shadowtape verify clean/
      shadowtape sanitize raw/ clean/ --engine ray --workers 16 --address ray://head:10001
    """
    results_fn = None
    if engine == "ray":
        from shadowtape.sanitize.ray_engine import ray_results

        results_fn = ray_results(address)
    elif address is not None:
        raise InputError("--address applies to --engine ray only; add --engine ray")
    facts = run_facts()
    facts.read_dataset(src)
    facts.wrote_dataset(dst)
    config = SanitizeConfig(
        policy=load_policy(policy_path),
        key=_load_key(key_file, key_env, ephemeral_key),
        nlp_model=nlp_model,
    )
    facts.policy = config.policy.fingerprint
    facts.use_key(config.key.fingerprint, config.key.source)
    with _live_progress("sanitizing") as progress:
        result = sanitize_dataset(
            src,
            dst,
            config,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            results_fn=results_fn,
        )
    m = result.manifest
    counts = m.counts
    facts.count(rows=m.rows, files=len(m.files))
    click.echo(
        f"sanitized {m.rows:,} exchanges in {len(m.files)} files -> {result.output} "
        f"(policy {m.policy_fingerprint}, key {m.key_fingerprint}"
        f"{', ephemeral' if config.key.source == 'ephemeral' else ''})"
        + (f"; engine ray, {workers} workers" if engine == "ray" else "")
    )
    _echo_totals("found", totals_by(counts, "detected"))
    _echo_totals("rules", totals_by(counts, "actions"))
    _echo_totals("bodies", totals_by(counts, "bodies"))
    if "propagation|learned" in counts:
        click.echo(
            f"  {'propagated:':<8} {counts['propagation|learned']:,} values learned, "
            f"{counts.get('propagation|applied', 0):,} further occurrences replaced"
        )
    if m.unavailable_entities:
        click.echo(
            f"  warning: no detector for {', '.join(m.unavailable_entities)} "
            "(needs --nlp-model); only policy rules covered them",
            err=True,
        )
    click.echo(f"  manifest: {Path(result.output) / MANIFEST_NAME}")


def _echo_totals(label: str, totals: dict[str, int]) -> None:
    text = ", ".join(f"{name} {n:,}" for name, n in totals.items()) or "none"
    click.echo(f"  {label + ':':<8} {text}")


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path())
@policy_option
@nlp_option
@click.option(
    "--allow-unsanitized",
    is_flag=True,
    help="Scan a dataset that is not flagged sanitized (e.g. raw capture) instead of refusing.",
)
@click.option(
    "--max-findings",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Findings to list; all are counted.",
)
def verify(
    directory: str,
    policy_path: str | None,
    nlp_model: str | None,
    allow_unsanitized: bool,
    max_findings: int,
) -> None:
    """Re-scan a sanitized dataset; exit 1 with locations if anything sensitive remains.

    An independent second opinion: it scans every value with its own strict set (every
    pattern recognizer, emails of any domain, secret formats, the name lexicon, street
    addresses, the built-in key vocabularies), whatever policy sanitize ran with, and checks
    OUT/_manifest.json against the files. Prints one line per finding: row id, field, entity
    type (never the value). Exit 0 when clean, 1 when something is found, 2 when DIR is not
    a sanitized dataset. --policy only adds a note when DIR was sanitized under another.

    \b
    Example:
      shadowtape verify clean/ --policy my-policy.yaml
    """
    facts = run_facts()
    facts.read_dataset(directory)
    policy_obj = load_policy(policy_path) if policy_path else None
    with _live_progress("verifying") as progress:
        report = verify_dataset(
            directory,
            policy_obj,
            nlp_model=nlp_model,
            allow_unsanitized=allow_unsanitized,
            progress=progress,
        )
    # The audit record names the policy the data was sanitized under (verify uses none).
    facts.policy = policy_obj.fingerprint if policy_obj else report.dataset_policy
    if report.policy_mismatch:
        click.echo(
            "  note: DIR was sanitized under another policy than --policy names; verify's "
            "checks do not depend on it",
            err=True,
        )
    for f in report.findings[:max_findings]:
        click.echo(f"{f.row_id}\t{f.field}\t{f.entity}")
    shown = min(len(report.findings), max_findings)
    if report.total_findings > shown:
        click.echo(f"... and {report.total_findings - shown:,} more findings")
    summary = (
        f"verified {report.rows:,} exchanges, {report.values_scanned:,} values: "
        f"{report.total_findings:,} findings"
    )
    if report.by_entity:
        summary += " (" + ", ".join(f"{e} {n:,}" for e, n in sorted(report.by_entity.items())) + ")"
    if report.unscanned_bodies:
        summary += f"; {report.unscanned_bodies:,} bodies could not be decoded and were not scanned"
    click.echo(summary)
    facts.count(
        rows=report.rows, values_scanned=report.values_scanned, findings=report.total_findings
    )
    if not report.clean:
        click.get_current_context().exit(1)
