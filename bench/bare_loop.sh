#!/bin/sh
# The bare loop ralph is measured against: for every spec, the agent with the prompt on
# stdin, the check, `git add -A` and a commit with the task trailer. No gate, no state,
# no logs, no recovery: the least a supervisor can do.
#
# usage: bare_loop.sh REPOSITORY AGENT_SHELL_LINE CHECK_SHELL_LINE
set -eu
cd "$1"
agent=$2
check=$3
for spec in specs/*.md; do
    id=${spec##*/}
    id=${id%.md}
    RALPH_TASK_ID=$id sh -c "$agent" < "$spec"
    sh -c "$check"
    git add -A
    git commit -q -m "Task $id" -m "Ralph-Task: $id"
done
