"""Write the ShapesEval split of the whole shapes-world grammar (dpok.prompts.shapeseval) from conf/base.

    python scripts/make_shapeseval.py            # writes data/01_raw/prompts/shapeseval.csv
    python scripts/make_shapeseval.py --check    # exit status 1 when the committed file differs

The split is a benchmark: write it once and change it only on purpose (another salt or fraction in
conf/base/parameters_shapeseval.yml is another benchmark, and no number compares across the two).
tests/prompts/test_shapeseval.py fails while the file and the configuration disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpok.config import PROJECT_ROOT, project_parameters
from dpok.prompts.shapeseval import SPLIT_FILE, ShapesEvalSplit, build_split, split_csv_text, split_sizes, write_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / SPLIT_FILE, help="where to write the split")
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)

    config = ShapesEvalSplit.from_dict(project_parameters()["shapeseval"]["split"])
    table = build_split(config)
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == split_csv_text(table)
        print(f"{args.output}: {'matches' if same else 'differs from'} conf/base's shapeseval.split")
        return 0 if same else 1
    write_split(table, args.output)
    print(f"wrote {args.output} ({len(table)} prompts)\n{split_sizes(table).to_string()}")
    test = table[table["split"] == "test"]
    print(f"test: {int(test['novel_pair'].sum())} with a novel colour-shape pair, "
          f"{int(test['novel_combination'].sum())} novel compositions; objects per image: "
          f"{test['objects'].value_counts().sort_index().to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
