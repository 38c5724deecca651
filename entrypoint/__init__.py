"""The in-container agent of cos-spot-runner and the run-record contract it shares with the runner.

Only the standard library and google-cloud-storage (for gs:// stores) are needed, so this
package can be copied into any workload image.
"""
