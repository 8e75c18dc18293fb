"""Tasks a policy is judged on, and the sandboxed evaluator that judges it.

Data flow: a TaskSpec (tasks.py) says how to build the environment and which seeds
belong to which split; the evaluator (evaluator.py) runs a policy file on those seeds
in sandboxed worker processes (sandbox.py, worker_pair.py, worker.py), detects failure events
(failures.py), renders failure clips (clips.py) and appends one record per evaluation
to the ledger (common/ledger.py; the records are common/events.py).
"""
