"""Which model families work with which options: every compatibility rule in one table.

A family declares its `Capabilities` (models/base.py); each rule here names an option a user
can ask for, the capability it needs, and what to say when the family lacks it. Training,
prediction, explain, embed and the CLI call `check` with what was asked, before any data is
read, so a combination that cannot work fails at once with one message.
"""

from __future__ import annotations

from dataclasses import dataclass

from sclabel.errors import InputError
from sclabel.models.base import Capabilities


@dataclass(frozen=True)
class Rule:
    option: str  # what was asked (a key of `check`'s keywords); its value fills {value}
    needs: str  # the capability that must hold; "not NAME" when it must not
    message: str  # formatted with {family} and {value}

    def allows(self, capabilities: Capabilities) -> bool:
        name = self.needs.removeprefix("not ")
        held = bool(getattr(capabilities, name))
        return not held if self.needs.startswith("not ") else held


RULES = (
    Rule("augment", "gradient", "donor augmentation needs a gradient-trained family, not {family}"),
    Rule(
        "loss",
        "gradient",
        "the {family!r} family is fitted by its own solver (logistic regression), so loss "
        "{value!r} does not apply; drop --loss (its class weighting is the class_weighted "
        "parameter)",
    ),
    Rule("store", "gradient", "the {family!r} family is fitted in memory; train it from an .h5ad"),
    Rule(
        "label_columns",
        "embeds",
        "{family} has one output and no shared embedding for more heads; several label "
        "columns need ffn, mlp, tabnet, bert or perceiver",
    ),
    Rule(
        "input",
        "not genes_only",
        "{family} reads genes as tokens; it cannot train on {value}. Drop that input",
    ),
    Rule("pretrained_option", "pretrained", "--{value} is for --model bert or perceiver"),
    Rule("pooling", "pretrained", "--pooling applies to bert/perceiver models, not {family}"),
    Rule(
        "explain",
        "explains",
        "{family} models have no feature mask; explain them with method 'gradient' (input x "
        "gradient), or train with model='tabnet' for its mask",
    ),
    Rule(
        "embed",
        "embeds",
        "{family} models have no cell embedding; train with --model mlp, tabnet or bert to "
        "embed cells (--model auto, the default, may choose linear or celltypist)",
    ),
)
OPTIONS = {rule.option for rule in RULES}


def check(family: str, capabilities: Capabilities, **asked) -> None:
    """Raise InputError for the first rule that what was `asked` breaks. A keyword is asked
    when its value is truthy (e.g. augment=True, loss="focal", input="pca=50")."""
    unknown = set(asked) - OPTIONS
    if unknown:
        raise TypeError(f"no compatibility rule for {sorted(unknown)}")
    for rule in RULES:
        value = asked.get(rule.option)
        if value and not rule.allows(capabilities):
            raise InputError(rule.message.format(family=family, value=value))
