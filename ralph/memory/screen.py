"""The screen: does a learning inform the next agent, or try to instruct it?

The memory file goes into every future prompt, so a learning that tells agents to ignore
ralph's rules, claims permissions, runs downloaded code, leaks secrets, edits protected paths,
hides text, or forges ralph's own labels would steer every session after it. ``screen`` holds
such a learning back with a named rule and a reason for the person who reviews it; the rest
pass. The rules are a table (``RULES``) of named patterns, checked in order.

The screen looks at several views of one text: as written (invisible and control characters),
folded (NFKC, case folded, look-alike letters mapped to Latin, invisible characters removed,
whitespace folded), folded with digits in words read as letters (``1gn0re``), and folded
without inline code spans (markup shown as code is harmless). It is a tripwire, not a proof:
docs/memory.md says what it can't catch.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

# A learning is at most 400 characters once cleaned; anything past this bound is never stored.
MAX_SCREENED_CHARS = 4096


@dataclass(frozen=True)
class Finding:
    """Why the screen held a text back."""

    rule: str
    """The rule's name, e.g. ``fetch-and-run``."""
    reason: str
    """One sentence for the person who reviews it."""


class View(Enum):
    """Which form of the text a rule's patterns search."""

    FOLDED = "folded"
    """NFKC, case folded, look-alikes mapped to Latin, invisibles removed, spaces folded."""
    DEOBFUSCATED = "deobfuscated"
    """FOLDED, and FOLDED with digits inside words read as letters (``1gn0re``)."""
    PROSE = "prose"
    """FOLDED without inline code spans: what a Markdown renderer would treat as markup."""


@dataclass(frozen=True)
class Rule:
    """One line of the screen's table: a name, a reason, and what it matches."""

    name: str
    reason: str
    patterns: tuple[re.Pattern[str], ...] = ()
    view: View = View.FOLDED
    negatable: bool = False
    """A negation just before a match ("never", "don't") makes it a warning, not an order."""
    predicate: Callable[[str], bool] | None = None
    """Looks at the text as written instead of at a view (characters, not words)."""
    gate: re.Pattern[str] | None = None
    """Something every match of ``patterns`` holds: without it they are not tried (speed)."""


@dataclass(frozen=True)
class _Views:
    """The forms of one text that rules search, each computed once."""

    raw: str

    @cached_property
    def folded(self) -> str:
        return _fold(self.raw)

    @cached_property
    def deobfuscated(self) -> str:
        return _LEET_WORD.sub(lambda match: _unleet(match[0]), self.folded)

    @cached_property
    def prose(self) -> str:
        return _CODE_SPAN.sub(" ", self.folded)

    def of(self, view: View) -> tuple[str, ...]:
        if view is View.DEOBFUSCATED:
            if self.deobfuscated == self.folded:
                return (self.folded,)
            return (self.folded, self.deobfuscated)
        if view is View.PROSE:
            return (self.prose,)
        return (self.folded,)


def screen(text: str) -> Finding | None:
    """The first rule ``text`` breaks, or None when it reads as information.

    ``text`` may be a learning as the agent wrote it (best: invisible characters are still
    there to be seen) or as ralph cleaned it.
    """
    views = _Views(text[:MAX_SCREENED_CHARS])
    for rule in RULES:
        if _breaks(rule, views):
            return Finding(rule.name, rule.reason)
    return None


def _breaks(rule: Rule, views: _Views) -> bool:
    if rule.predicate is not None and rule.predicate(views.raw):
        return True
    for text in views.of(rule.view):
        if rule.gate is not None and rule.gate.search(text) is None:
            continue
        for pattern in rule.patterns:
            for match in pattern.finditer(text):
                if not (rule.negatable and _negated(text, match)):
                    return True
    return False


# --- folding --------------------------------------------------------------------------------

# Cyrillic and Greek letters that look like Latin ones, as they are after case folding.
# fmt: off
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    "\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
})
# Greek letters that pass for Latin ones in a mixed word (mu is left out: "μs" is a unit).
_GREEK_LOOKALIKES = frozenset("αβεζηικνορτυχϲϳ")
_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a"})
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a"})
# Words the rules look for that hold an "l", so that "ru1es" reads "rules", not "ruies".
_L_WORDS = frozenset(
    {"all", "rules", "follow", "allowed", "only", "files", "guidelines", "policy", "policies",
     "lifted", "disabled", "real", "role", "mail", "tools", "file", "fully", "slowly"}
)
# fmt: on
_LEET_WORD = re.compile(r"\b(?=[\w@]*[a-z])(?=[\w@]*[013457@])[\w@]+\b")
_CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ESCAPE_SEQUENCE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*")


def _unleet(word: str) -> str:
    with_l = word.translate(_LEET_L)
    return with_l if with_l in _L_WORDS else word.translate(_LEET_I)


def _fold(text: str) -> str:
    text = _ESCAPE_SEQUENCE.sub("", text)
    if text.isascii():  # the common case, and NFKC and the look-alikes change nothing in it
        return " ".join(_ASCII_CONTROL.sub("", text).lower().split())
    text = unicodedata.normalize("NFKC", text).casefold().translate(_LOOKALIKES)
    kept = "".join(char for char in text if unicodedata.category(char) not in ("Cf", "Cc", "Co"))
    return " ".join(kept.split())


_NEGATION = re.compile(
    r"(?:never|not|no|don'?t|doesn'?t|didn'?t|won'?t|shouldn'?t|mustn'?t|can'?t|cannot|"
    r"avoid|without|nor),?"
)
# Words that may stand between a negation and what it negates: "never ever edit", "not to",
# "don't run git push".
_FILLERS = frozenset(
    {"ever", "directly", "manually", "yourself", "really", "just", "to", "run", "use", "call"}
)


def _negated(text: str, match: re.Match[str]) -> bool:
    """Whether the word before ``match``, or before what it names as its target, negates it
    ("never edit", "do not run", "write them here, not to AGENTS.md"). Only filler words may
    stand between, so "Never forget: edit ralph.toml" is not a negation."""
    starts = {match.start()}
    if "target" in match.re.groupindex and match.start("target") >= 0:
        starts.add(match.start("target"))
    for start in starts:
        words = text[max(0, start - 60) : start].split()
        while words and words[-1] in _FILLERS:
            words.pop()
        if words and _NEGATION.fullmatch(words[-1]):
            return True
    return False


# --- character rules ------------------------------------------------------------------------

_INVISIBLE_RANGES = (
    (0xFE00, 0xFE0D),  # variation selectors 1-14 (emoji use 15 and 16)
    (0xE0000, 0xE007F),  # tag characters: invisible ASCII
    (0xE0100, 0xE01EF),  # variation selectors supplement
)


def _has_invisible(text: str) -> bool:
    if text.isascii():
        return False
    for index, char in enumerate(text):
        if char.isascii():
            continue
        category = unicodedata.category(char)
        if char == "\u200d":  # the joiner holds emoji together; between letters it hides
            if _joins_letters(text, index):
                return True
        elif category in ("Cf", "Co", "Zl", "Zp") or any(
            low <= ord(char) <= high for low, high in _INVISIBLE_RANGES
        ):
            return True
    return False


def _joins_letters(text: str, index: int) -> bool:
    neighbours = text[index - 1 : index] + text[index + 1 : index + 2]
    return any(unicodedata.category(char).startswith(("L", "N")) for char in neighbours)


def _has_control(text: str) -> bool:
    if text.isascii():
        return _ASCII_CONTROL.search(text) is not None
    return any(unicodedata.category(char) == "Cc" and not char.isspace() for char in text)


_WORD = re.compile(r"[^\W\d_]+")


def _mixes_scripts(text: str) -> bool:
    """A word of Latin letters with a Cyrillic letter, or a Greek look-alike, in it."""
    if text.isascii():
        return False
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if not any("a" <= char <= "z" for char in word):
            continue
        for char in word:
            if char in _GREEK_LOOKALIKES or "CYRILLIC" in unicodedata.name(char, ""):
                return True
    return False


# --- the table ------------------------------------------------------------------------------


def _any(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


_QUALIFIER = (
    r"(?:all|any|every|each|of|the|your|these|those|previous|prior|above|earlier|preceding|"
    r"original|initial|existing|other|system|safety|security|standing|current|default|old|"
    r"given|following|remaining|ralph'?s|runner'?s|ralph|runner|harness'?s|my|our|whatever)"
)
_ORDERS = (
    r"(?:instructions?|rules?|prompts?|guidelines?|guidance|directions|directives?|"
    r"constraints?|restrictions?|guardrails?|polic(?:y|ies)|orders?|commands?|context|"
    r"system prompt|rules section|limits?|limitations?|protected (?:paths?|files?|list))"
)
# Said without a qualifier ("ignore instructions"), only the plural nouns of orders count:
# "ignore rule E501" is a linter setting.
_ORDERS_BARE = (
    r"(?:instructions|rules|prompts?|guidelines|guidance|directives|guardrails|restrictions|"
    r"constraints|policies|system prompt|protected paths)"
)
_DISOBEY = (
    r"(?:ignor\w*|disregard\w*|forget\w*|overrid\w*|overrul\w*|bypass\w*|circumvent\w*|"
    r"abandon\w*|discard\w*|nullif\w*|supersed\w*|set aside|pay no attention to|"
    r"(?:do not|don'?t|stop|no longer|quit) (?:follow|obey|heed|respect)\w*|"
    r"(?:don'?t|do not|no) (?:need|have) to (?:respect|follow|obey|honou?r|worry about|"
    r"care about|mind|stick to|keep to))"
)
_LIMITS = (
    r"(?:protected (?:paths?|files?|globs?|folders?)|protections?|restrictions?|guardrails?|"
    r"safeguards?|(?:the |your |all |these |ralph'?s |the runner'?s |runner |safety )rules|"
    r"^(?:rules|instructions)|(?:rules|instructions) (?:above|below|at the end|in the prompt)|"
    r"protected list|(?:previous|prior|earlier|above|original|system) (?:instructions|rules|"
    r"prompt)|instructions|the sandbox|sandbox(?:ing)?|the gate|append[_ ]only)"
)
# Rules or notes placed around the memory, and what an injection says to get rid of them.
_POSITIONED = (
    r"(?:rules|instructions|notes|guidance|guidelines|restrictions|limits|safety \w+)"
    r"(?: \w+){0,2} (?:below|above|at the (?:end|bottom|top)|that follow|after (?:this|the "
    r"memory)|in the prompt|of the prompt)"
)
_DISMISS = (
    r"(?:(?:were|was) (?:added|written|put there|included) (?:by mistake|in error|"
    r"accidentally)|(?:are|is) (?:only |just )?(?:for humans|for people|not for (?:you|agents)|"
    r"for (?:a )?different \w+|examples?|optional|advisory|outdated|wrong|a test|stale|fake)|"
    r"(?:don'?t|do not|no longer) apply|(?:agents|you) (?:may|can) (?:skip|ignore) them|"
    r"can (?:safely )?be (?:safely )?(?:ignored|skipped|disregarded|overridden))"
)
_PROTECTED = (
    r"(?P<target>specs/|spec files?|task specs?|specs (?:folder|directory|dir)|"
    r"specs? (?:for|of) (?:this|the|your|each|every) task|ralph\.toml|\[tool\.ralph\]|agents\.md|"
    r"claude\.md|gemini\.md|\.cursorrules|copilot-instructions|memory file|"
    r"learnings-pending|\.ralph/|protected (?:paths?|files?|globs?|list|setting)|"
    r"\bappend_only\b|\bprotected\s*=|\bchecks\s*=|(?:the |ralph'?s |global )checks (?:list|"
    r"setting)|sandbox\s*(?:=|setting|option|mode)|\brun_hooks\b|\bsecret_scan\b|"
    r"\.git/(?:hooks|config|info))"
)
_CHANGE = (
    r"(?:\b(?:edit|chang|modif|updat|rewrit|overwrit|delet|remov|touch|writ|append|"
    r"add (?:to|into)|empt|clear|truncat|disabl|turn off|relax|loosen|replac|mov|renam|fix|"
    r"clean up|reset|set|put|patch|creat|drop|unprotect)\w*\b|\b(?:edits?|changes?|"
    r"modifications?|writes?) (?:to|of|in|on)\b)"
)
_SECRET = (
    r"(?:environment variables|env vars|environment|\benv\b|secrets?|credentials?|"
    r"api[ _-]?keys?|access[ _-]?keys?|private[ _-]?keys?|ssh keys?|passwords?|"
    r"(?:auth|access|bearer|session|api) tokens?|\btokens\b|cookies|\.env\b(?![.\w])|"
    r"\$\{?[a-z0-9_]*(?:token|secret|key|password|passwd|credential|auth)[a-z0-9_]*|"
    r"\$\{?(?:aws|github|gh|openai|anthropic|gemini|google|azure|npm|pypi|docker|slack|stripe)"
    r"_[a-z0-9_]*|\b[a-z0-9]+_[a-z0-9_]*(?:token|secret|key|password|passwd|credentials?)\b|"
    r"system prompt|your (?:system )?prompt|your instructions|os\.environ\b(?![\[.])|"
    r"process\.env\b(?![\[.]))"
)
_SHOW = (
    r"\b(?:print|dump|echo|output|display|reveal|expose|paste|leak|exfiltrate|send|post|upload|"
    r"share|e-?mail|mail|transmit|cat|printf|beacon|attach|tell|disclose|divulge|hand over|"
    r"forward|give|submit)\b"
)
_PUT = r"\b(?:include|write|copy|add|put|append|return|report|log|show|list|save|store)\b"
_WHERE = (
    r"(?:in|into|to|at) (?:the |your |a |an )?(?:final |next |every )?(?:message|answer|"
    r"output|response|reply|learnings?|learnings file|commit|notes?|logs?|test output|readme|"
    r"comment|issue|pr|pull request|file|repo|repository|git|tree|https?://|"
    r"[\w./-]*\.(?:txt|md|json|ya?ml|log|html)\b)"
)
_SHELL = r"(?:sudo\s+(?:-\S+\s+)*)?(?:ba|z|da|k|fi|c|tc)?sh\b(?!\s*\|)"
_INTERPRETER = (
    r"(?:python[\d.]*|perl|ruby|node|php|iex|invoke-expression|powershell|pwsh|source)\b"
    r"(?!\s+-m\s+json\.tool)"
)
_DOWNLOADER = r"\b(?:curl|wget|fetch|iwr|irm|invoke-webrequest|invoke-restmethod|nc|ncat)\b"

RULES: tuple[Rule, ...] = (
    Rule(
        "invisible-unicode",
        "it holds invisible or bidirectional Unicode characters that can hide or reorder text",
        predicate=_has_invisible,
    ),
    Rule(
        "control-characters",
        "it holds terminal control characters that can rewrite what a reviewer sees",
        predicate=_has_control,
    ),
    Rule(
        "look-alike-letters",
        "it mixes look-alike letters from another alphabet into Latin words",
        predicate=_mixes_scripts,
    ),
    Rule(
        "forged-label",
        "it imitates the [task · date] label ralph puts on its own entries",
        _any(
            r"\[[^\[\]]{0,80}[·•∙⋅・‧][^\[\]]{0,80}\]",
            r"\[[^\[\]]{0,80}\b\d{4}-\d{2}-\d{2}\b[^\[\]]{0,40}\]",
        ),
    ),
    Rule(
        "prompt-markup",
        "it imitates the markers that separate the memory, the rules or roles in a prompt",
        _any(
            r"<{3,}\s*memory|\bmemory-[0-9a-f]{4,}|memory\S*\s*>{3,}",
            r"\bend of (?:the )?(?:project )?memory\b|\b(?:begin|start) of (?:the )?rules\b",
            r"\breal (?:rules|instructions) (?:follow|below|are)\b",
            r"<\s*/?\s*(?:system|assistant|user|developer|instructions?|memory|rules|prompt)\s*>",
            r"<\|[a-z_]+\|>|\[/?inst\]|<</?sys>>",
            r"(?:^|[.!?]\s)(?:system|assistant|developer)\s*:",
            r"(?:^|\S\s+|[.;:]\s*)#{1,6}\s*(?:rules|task|instructions|system|project memory|"
            r"learnings)\b",
        ),
    ),
    Rule(
        "override-instructions",
        "it tells the agent to ignore or override its rules or instructions",
        _any(
            rf"{_DISOBEY}(?:\s+{_QUALIFIER})+\s+{_ORDERS}\b",
            rf"{_DISOBEY}\s+{_ORDERS_BARE}\b(?! [a-z]*\d)",
            r"\b(?:forget|ignore|disregard)\s+(?:everything|anything|whatever|all)\s+(?:you\s+"
            r"(?:were|have been|'ve been)\s+(?:told|given|taught|instructed)|above|before|else)",
            r"\bfollow (?:only )?(?:this|these) (?:file|memory|note|learning|section)s?\b"
            r"(?: (?:instead|only))?",
            r"\btreat (?:this|these) (?:memory|note|learning|file)s? as (?:your )?(?:new )?"
            r"(?:system prompt|instructions|rules)",
            r"\b(?:this|these) (?:memory|note|learning|file|entry)s? (?:overrides?|supersedes?|"
            r"replaces?|takes? precedence over)\b",
            r"\b(?:has|have|takes?|gets?) (?:priority|precedence) over (?:the |your |ralph'?s |"
            r"the runner'?s |any |all )?(?:rules|instructions|prompt)\b",
            rf"{_POSITIONED}[^.;\n]{{0,40}}?{_DISMISS}",
            r"\btreat (?:\w+ ){0,3}(?:this|these) (?:file|memory|notes?|learnings?|section)s? as"
            r"\b",
            r"\b(?:system|admin|security|emergency|maintenance|developer) override\b",
            r"\b(?:higher|more|top|greater) (?:priority|precedence|authority|important|"
            r"authoritative) than (?:the |any |all |ralph'?s |the runner'?s |your )?(?:runner |"
            r"system )?(?:rules|instructions|prompt)\b",
            r"\b(?:never|under no circumstances|do not|don'?t|must not) (?:follow|obey|respect|"
            rf"apply|heed) (?:(?:the |any )?{_POSITIONED}|(?:your|ralph'?s|the runner'?s|the "
            r"system) (?:rules|instructions|prompt))",
            rf"{_DISOBEY}\s+(?:the |your |this )?(?:task|spec|assignment)(?: description| file)?"
            r"\b",
            r"\bnew (?:system )?(?:instructions|prompt|rules)\b|\bnew ones\s*:",
            r"\b(?:this|these) (?:file|memory|notes?|learnings?|section)'?s? (?:instructions |"
            r"rules )?(?:comes?|goes?) first\b|\b(?:instructions|rules|notes) in this (?:file|"
            r"memory|note|section) (?:come first|take priority|win|prevail|outrank)",
            r"\bwhatever (?:the |your )?(?:rules?|instructions|prompt)(?: section)? says?\b",
            r"\byour (?:real|actual|true|new|secret|hidden|only) (?:task|goal|job|objective|"
            r"mission|instructions?|purpose) (?:is|are)\b",
            r"\b(?:replaces?|supersedes?|overrides?|outranks?|trumps?|cancels?) (?:your|ralph'?s|"
            rf"the runner'?s|all (?:the )?|any (?:of the )?|the previous|the prior|the above) "
            rf"{_ORDERS}\b",
            r"\bupdated (?:system )?(?:instructions|prompt)\b",
            r"\bfrom now on,? you (?:are|will|must|should|may|can|have)\b",
            r"\byou are now (?:a|an|the|in|dan|devmode)\b|\bpretend (?:to be|you are)\b",
            r"\b(?:developer|dev|god|unrestricted|jailbreak|admin) ?mode\b|\bjailbr(?:eak|oken)",
            r"\bwithout (?:any )?(?:restrictions|guardrails|rules|limits)\b|\banything goes\b",
        ),
        view=View.DEOBFUSCATED,
    ),
    Rule(
        "permission-claim",
        "it claims the agent has permissions the runner never gives",
        _any(
            r"\b(?:the )?(?:runner|ralph|harness|supervisor|orchestrator)(?:'s)? (?:now |also |"
            r"explicitly )?(?:allows?|permits?|lets (?:you|agents?)|accepts?|approves?|"
            r"authori[sz]es?|is fine with|(?:does ?n[o']t|won'?t|will not) (?:check|mind|care|"
            r"enforce|notice)|ignores?)\b",
            r"\b(?:you|agents?|the agent|assistants?)(?: now)?(?:'re| are| is| have been| has been|"
            r" were) (?:now )?(?:allowed|permitted|authori[sz]ed|cleared|free|exempt|approved|"
            r"entitled)\b",
            r"\b(?:you|agents?|the agent)\b[^.;\n]{0,40}\b(?:maintainer|admin|root|owner|"
            r"elevated|superuser|sudo) (?:privileges|rights|permissions|access|powers)\b",
            r"\b(?:said|says|told|agreed|decided)(?: that)? (?:you|agents?|the agent) (?:can|may|"
            r"are allowed to|should|must)\b",
            r"\b(?:you|agents?|the agent)(?: have| has|'ve)?(?: been)? (?:granted|given) "
            r"(?:full |root |admin |unrestricted |special )?(?:permission|access|rights|approval"
            r"|clearance|authority)\b",
            r"\b(?:maintainers?|owners?|admins?|administrators?|operators?|users?|humans?|team|"
            r"lead|reviewers?) (?:has |have |had )?(?:now )?(?:authori[sz]ed|allowed|permitted|"
            r"approved|granted|okayed|pre-?approved|signed off on) (?:you|agents?|the agent|ai|"
            r"edits|changes|editing|changing|modifying|committing|pushing|direct)\b",
            rf"{_LIMITS}(?: \w+){{0,6}} (?:(?:no longer|don'?t|do not|doesn'?t|does not|won'?t|"
            r"will not|never|are not|aren'?t|is not|isn'?t) (?:apply|applies|matter|count|bind|"
            r"binding|hold|enforced|in (?:force|effect)|relevant)|(?:are|is|have been|has been|"
            r"were|got) (?:now )?(?:lifted|disabled|removed|suspended|void|revoked|waived|relaxed|"
            r"off|gone|obsolete|outdated|cancell?ed|superseded|overridden|turned off|expired)|"
            r"(?:are|is) (?:only |just )?(?:examples?|suggestions?|optional|advisory|a test|"
            r"not (?:binding|mandatory|required)))\b",
            r"\b(?:operator|owner|maintainers?|user|human|team|admin)s? (?:wants?|asked|told|"
            r"instructed|needs?|expects?) (?:you|agents?|the agent) to\b",
            r"\b(?:runner|ralph|the gate)(?:'s)?(?: \w+){0,3} (?:is (?:lenient|lax|relaxed|"
            r"permissive)|(?:won'?t|will not|doesn'?t|does not|can'?t|never) (?:notice|detect|"
            r"catch|see|care))\b",
            r"\b(?:is|are) (?:now )?(?:allowed|permitted|ok|okay|fine) now\b",
            r"\byou have (?:full|unrestricted|complete|root|admin|write|sudo)(?: write)? "
            r"(?:access|rights|permissions?)\b",
            r"\b(?:operators?|owners?|maintainers?|users?|humans?|team|admins?) (?:are|is) "
            r"(?:fine|ok|okay|happy|cool) with\b",
            r"\bi (?:hereby )?(?:approve|authori[sz]e|allow|permit|grant|give (?:you )?"
            r"permission)\b",
            r"\b(?:agents?|you) (?:can|may) (?:now )?(?:edit|change|modify|touch|write|delete) "
            r"(?:everything|anything|any file|all files)\b(?! (?:under|in|inside|below|within)\b)",
        ),
        view=View.DEOBFUSCATED,
    ),
    Rule(
        "runner-actions",
        "it tells the agent to commit, push or rewrite history, which only the runner does",
        _any(
            r"\b(?:you (?:may|can|should|must|are allowed to)|feel free to|go ahead and|it is "
            r"(?:fine|ok|okay|safe) to|it's (?:fine|ok|okay|safe) to)(?: \w+){0,2} (?:commit|"
            r"push|amend|force-push|rebase|stash|reset --hard|switch branch)\w*\b",
            r"\bgit (?:commit|push|reset --hard|rebase|stash|switch|checkout -b|tag|"
            r"update-ref)\b",
            r"\bcommit (?:your |the |all )?(?:changes|work) (?:yourself|directly)\b",
            r"\bcommit directly to\b|\bpush (?:directly )?to (?:origin|main|master|the remote)\b",
            r"\bcommit (?:it )?anyway\b",
            r"--no-verify\b",
        ),
        negatable=True,
    ),
    Rule(
        "protected-change",
        "it presents protected paths or ralph's settings as something to change",
        gate=re.compile(_PROTECTED),
        patterns=_any(
            rf"{_CHANGE}[^.;!?\n]{{0,50}}?{_PROTECTED}",
            rf"{_PROTECTED}[^.;!?\n]{{0,30}}\b(?:is|are) (?:now )?(?:yours to (?:edit|change)|"
            r"editable|writable|fair game|(?:fine|ok|okay|safe) to (?:edit|change|touch|modify)|"
            r"(?:not|no longer) (?:really )?protected|unprotected)",
            rf"{_PROTECTED}[^.;!?\n]{{0,20}}?\b(?:and|then) (?:add|edit|change|append|write|"
            r"remove|delete|rewrite|replace)\b",
            rf"{_PROTECTED}[^.;!?\n]{{0,30}}\b(?:can|may|should) (?:now )?be (?:edited|changed|"
            r"modified|rewritten|deleted|removed|overwritten|updated)",
        ),
        negatable=True,
    ),
    Rule(
        "weaken-checks",
        "it tells the agent to skip, disable or get around the checks and safeguards",
        _any(
            r"\b(?:skip|disable|bypass|remove|delete|empty|turn off|comment out|weaken|relax|"
            r"loosen|stub out|short-circuit|neuter|replace)\b(?: \w+){0,2} (?:the |all (?:the )?|"
            r"every |each |any )?(?:checks?|check commands|gate|secret[ _]scan|sandbox|"
            r"protections?|guardrails?|safeguards?|safety checks?|test suite)\b",
            r"\b(?:delete|remove|skip|xfail|comment out|disable|weaken|loosen|mark|ignore)\b"
            r"[^.;\n]{0,30}\bfailing (?:tests?|checks?|assertions?|specs?)\b",
            r"\breport (?:success|that (?:the )?(?:checks|tests) pass)",
            r"\b(?:checks?|check commands?)\b[^.;\n]{0,30}\b(?:with|to|by|into) [`'\"]?(?:exit 0|"
            r"true|:)(?:[`'\"\s.,;]|$)",
            r"\b(?:claim|say|pretend|report|tell \w+)\b[^.;\n]{0,20}\b(?:the task is (?:done|"
            r"complete|finished)|(?:they|it|tests|checks|everything) (?:pass|passed|succeed|"
            r"succeeded|(?:is|are) green))\b",
        ),
        negatable=True,
    ),
    Rule(
        "fetch-and-run",
        "it tells the agent to download code and run it",
        _any(
            rf"{_DOWNLOADER}[^|\n]{{0,200}}\|\s*(?:{_SHELL}|{_INTERPRETER})",
            rf"\|\s*{_SHELL}",
            r"\b(?:base64|xxd|openssl)\b[^|\n]{0,80}\|\s*(?:\S+\s+)?(?:python[\d.]*|perl|ruby|"
            r"node)\b",
            r"<\(\s*(?:curl|wget|iwr|fetch)\b",
            r"\$\(\s*(?:curl|wget|iwr|fetch)\b",
            rf"{_DOWNLOADER}[^\n]{{0,200}}?(?:\s-o|\s-O|--output)\b[^\n]{{0,200}}?(?:&&|;|\bthen"
            r"\b|\band\b)\s*(?:sudo\s+)?(?:sh|bash|python[\d.]*|perl|ruby|node|chmod\s+\+x|\./|"
            r"source)\b",
            r"\b(?:download|fetch|grab|pull|get|retrieve)\b.{0,120}?https?://.{0,120}?\b(?:run|"
            r"execute|exec|source|pipe|chmod)\b",
            r"\b(?:download|fetch|grab|pull|get|curl|wget)\w* (?:and|then|&) (?:run|execute|exec|"
            r"source|pipe)\w*\b",
            r"\b(?:run|execute|exec|source|launch|install)\b.{0,40}?\b(?:script|binary|installer|"
            r"payload|file|tool|program|code)\b.{0,30}?\b(?:from|at|hosted (?:at|on)|located at|"
            r"served (?:at|from)|downloaded from|on)\s+https?://",
            r"\b(?:pip3?|pipx|uv pip|npm|pnpm|yarn|gem)\s+(?:install|add)\b[^\n]{0,60}?https?://"
            r"\S+\.(?:tar\.gz|tgz|whl|zip|gem)\b",
            r"\b(?:npx|bunx|pnpm dlx|yarn dlx|uvx|pipx run)\s+(?:-\S+\s+)*https?://",
            r"\bexec\s*\(.{0,120}?(?:urlopen|requests\.get|urllib|httpx|https?://)",
            r"\beval\s*\(\s*(?:atob|fetch|require\(\s*['\"]https?)",
        ),
        negatable=True,
    ),
    Rule(
        "secret-exfiltration",
        "it tells the agent to print, send or copy out secrets or environment variables",
        _any(
            rf"{_SHOW}[^.;\n]{{0,60}}?{_SECRET}",
            rf"{_PUT}[^.;\n]{{0,40}}?{_SECRET}[^.;\n]{{0,40}}?\b{_WHERE}",
            rf"(?:{_PUT}|{_SHOW})[^.;\n]{{0,20}}?\byour (?:own )?(?:session |api |access |auth |"
            r"ssh )?(?:tokens?|credentials?|keys?|passwords?|cookies?)\b",
            r"\b(?:upload|send|post|exfiltrate|transfer|scp|rsync|forward|mirror|beam)\s+(?!to\b)"
            r"[^;\n]{1,80}?\bto https?://(?!localhost|127\.|0\.0\.0\.0|\[::1\])",
            r"(?:^|[\s`'\"(;|&])(?:printenv|export -p|declare -x)\b",
            r"(?:^|[`'\"(;|&]\s*|\b(?:run|type|execute)\s+)env\s*(?:$|[`'\")|>;&])",
            r"/proc/\S*/environ|\bos\.environ\s*\)|\bprocess\.env\s*\)",
            r"~/\.ssh\b|\bid_(?:rsa|ed25519|ecdsa|dsa)\b|\.aws/credentials|~/\.aws\b|"
            r"\.netrc\b|\.git-credentials|\.docker/config\.json|\.kube/config|/etc/shadow|"
            r"gh/hosts\.yml|\.config/gcloud",
            r"\b(?:webhook\.site|requestbin|pipedream\.net|ngrok(?:-free)?\.(?:io|app)|"
            r"burpcollaborator|interact\.sh|oast\.(?:fun|live|site|online|me|pro)|pastebin\.com|"
            r"paste\.ee|hastebin|transfer\.sh|0x0\.st|termbin)\b",
        ),
        negatable=True,
    ),
    Rule(
        "self-propagation",
        "it asks agents to copy it into future learnings, so it spreads",
        _any(
            r"\b(?:copy|repeat|include|write|add|append|re-?add|propagate|keep|paste|carry)\w*\b"
            r"[^.;\n]{0,40}\b(?:this|these|the following|the same)\s+(?:line|learning|note|"
            r"instruction|message|text|bullet|sentence)s?\b[^.;\n]{0,60}\b(?:learnings?|every|"
            r"each|future|all|next)\b",
            r"\b(?:always|every time|each time|in every|at the end of every)\b[^.;\n]{0,60}"
            r"ralph_(?:learnings|prompt|question)_file|ralph_learnings_file[^.;\n]{0,40}\b(?:always|"
            r"every|each)\b",
            r"\b(?:this|these|the following)(?: exact| same)? (?:line|learning|note|instruction|"
            r"message|text|bullet|sentence|paragraph)s?\b[^.;\n]{0,60}\b(?:every|each|all|"
            r"future|next|your) (?:\w+ )?learnings?\b",
            r"\b(?:write|put|add|append)\b[^.;\n]{0,60}\b(?:at the top of|in|into|to) your "
            r"learnings\b",
        ),
    ),
    Rule(
        "hidden-markup",
        "it holds HTML or Markdown that can run script or hide text where the file is rendered",
        _any(
            r"<\s*/?\s*(?:script|iframe|frame|frameset|object|embed|applet|style|details|summary|"
            r"noscript|template|meta|base|link|svg|math|xmp|plaintext|textarea|title|dialog)\b",
            r"<[a-z][^<>]*\s(?:on[a-z]+\s*=|style\s*=|hidden\b)",
            r"<!-|-->",  # also as clean_learning defuses it: folding turns its dashes back
            r"\b(?:javascript|vbscript|livescript)\s*:|\bdata:(?:text/html|image/svg)",
            r"\[[^\]]*\]:\s*(?:#|<>)",
        ),
        view=View.PROSE,
    ),
)
"""Checked in order; the first that matches names the finding."""

RULE_NAMES: frozenset[str] = frozenset(rule.name for rule in RULES)
_BY_NAME = {rule.name: rule for rule in RULES}


def finding_named(name: str) -> Finding | None:
    """The finding of the rule called ``name`` (for a finding stored by name), if it exists."""
    rule = _BY_NAME.get(name)
    return None if rule is None else Finding(rule.name, rule.reason)
