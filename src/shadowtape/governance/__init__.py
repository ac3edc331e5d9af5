"""Governance: who ran what on which data (audit trail), where a dataset came from (lineage),
which traffic matters most (scenarios tagged by risk), and who may read raw data (file modes).

A shared leaf like `schema.py`: stages may import it, it imports no stage (route templates
come from the HTTP core, `shadowtape.http.routes`).
"""
