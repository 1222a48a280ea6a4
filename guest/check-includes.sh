#!/bin/sh
# Checks that the guest's modules depend on each other one way only, from the `#include "..."` lines of its
# sources. A module is X.h with everything named X_*.{c,h,S} (the longest such prefix that has a header), so
# balloon_hint.c and balloon_internal.h belong to balloon, virtio_mmio.c to virtio_mmio; a file without such a
# header is a module of its own (main.c). Fails when the include graph between modules has a cycle.
# With arguments (the modules, bottom-up), also fails when a module is not listed or includes a module that is
# not listed before it. Needs only sh, awk and tsort. Usage: check-includes.sh [MODULE...]
set -eu
cd "$(dirname "$0")"

# One line per include: "module-of-file module-of-header file header".
edges=$(awk '
    function module(name,    base, n, parts, prefix, best, i) {
        base = name
        sub(/\.[^.]*$/, "", base)
        n = split(base, parts, "_")
        best = base
        prefix = ""
        for (i = 1; i <= n; i++) {
            prefix = i == 1 ? parts[1] : prefix "_" parts[i]
            if (prefix != base && (prefix ".h") in headers)
                best = prefix
        }
        return best
    }
    BEGIN {
        for (i = 1; i < ARGC; i++)
            if (ARGV[i] ~ /\.h$/)
                headers[ARGV[i]] = 1
    }
    FNR == 1 { print module(FILENAME), module(FILENAME), FILENAME, FILENAME }
    /^[ \t]*#[ \t]*include[ \t]*"/ {
        header = $0
        sub(/^[^"]*"/, "", header)
        sub(/".*$/, "", header)
        print module(FILENAME), module(header), FILENAME, header
    }
' *.c *.h *.S)

# tsort wants "before after" pairs: the included module first, so its order is bottom-up. It names the modules
# of each cycle it finds (some more than once).
pairs=$(printf '%s\n' "$edges" | awk '{ print $2, $1 }')
if ! loops=$(printf '%s\n' "$pairs" | tsort 2>&1 >/dev/null); then
    echo "check-includes: the guest's modules include each other in a cycle:" >&2
    printf '%s\n' "$loops" | awk '
        /input contains a loop/ { if (cycle != "" && !seen[cycle]++) print "  cycle through:" cycle; cycle = ""; next }
        { sub(/^tsort: /, ""); cycle = cycle " " $0 }
        END { if (cycle != "" && !seen[cycle]++) print "  cycle through:" cycle }
    ' >&2
    exit 1
fi

if [ $# -eq 0 ]; then
    echo "check-includes: no cycle; the modules bottom-up:" $(printf '%s\n' "$pairs" | tsort)
    exit 0
fi

printf '%s\n' "$edges" | awk -v layers="$*" '
    BEGIN {
        n = split(layers, names, " ")
        for (i = 1; i <= n; i++)
            rank[names[i]] = i
    }
    !($1 in rank) && !seen[$1]++ {
        printf "check-includes: module %s (%s) is not in the layering\n", $1, $3 > "/dev/stderr"
        bad = 1
    }
    $1 != $2 && ($1 in rank) && ($2 in rank) && rank[$2] >= rank[$1] {
        printf "check-includes: %s includes %s, but %s is not below %s in the layering\n", $3, $4, $2, $1 \
            > "/dev/stderr"
        bad = 1
    }
    END { exit bad }
'
