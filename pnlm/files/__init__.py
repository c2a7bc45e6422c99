"""The guarantees on a user's files: nothing pnlm writes appears half-done (atomic.py: a temporary beside
the target, then one rename), no --out replaces what pnlm did not write (outputs.py), one writer per
output at a time (run_lock.py), and the small files a user hands us read with one clear error line
(json_object.py, toml_file.py). Nothing here imports anything of pnlm but pnlm.errors."""
