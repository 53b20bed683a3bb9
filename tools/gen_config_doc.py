"""Regenerate docs/configuration.md from the Config dataclass (its defaults and comments).

    python tools/gen_config_doc.py > docs/configuration.md
"""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qmix" / "config.py"

HEADER = """# Configuration reference

Every key of `qmix train`'s config, with its default (before presets) and meaning. Override any
key with `key=value` (dotted for `env_args`, e.g. `env_args.time_limit=50`), or put keys in a
YAML file and pass `--config FILE`. `qmix config --alg A --env E [key=value ...]` prints the
resolved values. Resolution order, later wins: these defaults < the algorithm preset
(`src/qmix/configs/algs/<alg>.yaml`) < the env family preset
(`src/qmix/configs/envs/<family>.yaml`) < `--config FILE` < `key=value`.
"""

FOOTER = """
## Presets

- `qmix`: pymarl's QMIX (RMSprop lr 5e-4, batch 32 episodes, buffer 5000, target copy every 200
  episodes, epsilon 1 -> 0.05 over 50k steps, 1-layer hypernets, double Q).
- `qmix-tuned`: pymarl2's (Adam lr 1e-3, TD(lambda) 0.6, batch 128, 8 envs with one update per 8
  episodes, epsilon over 100k steps, 2-layer hypernets).
- `vdn`, `iql`: pymarl's settings with the VDN sum, or no mixer.
- Env family presets (`matrix`, `micro`, `lbf`, `rware`, `mpe`, `vmas`, `smac`, `smacv2`, `gym`)
  set budgets, test schedules, runner sizes and `env_args`; see the YAML files.

## Validation

Unknown keys (with close matches), wrong types, out-of-range values, `n_step` together with
`td_lambda`, `epsilon_finish > epsilon_start` and `batch_size > buffer_size` stop with one line
and exit code 2. Unknown `env_args` keys are checked by the env family.
"""


def main() -> None:
    src = SRC.read_text()
    body = src[src.index("class Config:"): src.index("    def to_dict")]
    out = [HEADER]
    for line in body.splitlines()[1:]:
        m = re.match(r"\s+# --- (.*) ---", line)
        if m:
            out += ["", f"## {m.group(1)[0].upper() + m.group(1)[1:]}", "", "| key | default | meaning |",
                    "|---|---|---|"]
            continue
        m = re.match(r"\s+(\w+): ([^=]+?) = (.+?)(?:\s+#\s*(.*))?$", line)
        if m:
            name, typ, default, comment = m.groups()
            default = default.replace("field(default_factory=dict)", "{}").replace("_", "")
            if typ.startswith("Literal"):
                typ = "one of " + typ[8:-1].replace('"', "")
            out.append(f"| `{name}` | `{default}` | {comment or ''} ({typ}) |")
    print("\n".join(out) + "\n" + FOOTER, end="")


if __name__ == "__main__":
    main()
