"""Report: what the user looks at after a replay. Reads the diff dataset and its summary.json
(written by the diff stage beside the results) and renders them for a terminal, a browser,
CI (JUnit XML and exit codes) and notebooks. Quiet when nothing changed, loud when it did."""
