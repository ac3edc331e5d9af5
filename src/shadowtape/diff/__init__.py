"""Diff: structural comparison of recorded vs staging responses, route templates, and the
noise model that keeps fields which differ anyway (timestamps, generated ids, nonces) apart
from real drift. Reads a results dataset, writes a diff dataset beside it."""
