#!/usr/bin/env bash
# Prints docs/rulegraph.md: the default study's rule graph as a Mermaid flowchart (GitHub
# renders it as a picture; no graphviz needed). `make rulegraph` writes it; a test checks it.
# Snakemake numbers the rules and orders the edges differently from run to run, so the
# nodes are renamed after their rules and nodes and edges are sorted: the page is stable.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# The DAG"
echo
echo "The rules of the default study (\`config/config.yaml\`), from \`snakemake --rulegraph mermaid-js\`;"
echo "\`make rulegraph\` regenerates this page."
echo
echo '```mermaid'
"${SNAKEMAKE:-snakemake}" --rulegraph mermaid-js --quiet 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]", text, flags=re.M))
edges = sorted({(names[a], names[b]) for a, b in re.findall(r"(id\d+)\s*-->\s*(id\d+)", text)})
print("flowchart TB")
for name in sorted(names.values()):
    print(f"\t{name}[{name}]")
for a, b in edges:
    print(f"\t{a} --> {b}")
'
echo '```'
