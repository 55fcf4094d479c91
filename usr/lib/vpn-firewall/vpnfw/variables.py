"""The values of a config's @def variables and the functions it defines: what the config
reader fills in and the compiler, the settings and the built-in functions (@glob, @resolve,
...) read. Apart from the compiler, so that reading a config needs no compiler.
"""

from .errors import ConfigError
from .functions import call_builtin
from .parser import Atom, Call, FuncDef, ListNode


class Variables:
    """Values of @def variables (an Atom, or a list of Atoms), functions, and which were used.

    Top-level definitions are global (a later file's override an earlier one's, and rules
    see the final value); a definition inside a block or a function's parameters hold in
    that block only, as in ferm."""

    def __init__(self):
        self.values = {}
        self.defined_at = {}
        self.used = set()
        self.functions = {}  # name ('&NAME') -> FuncDef, global
        self.scopes = []  # innermost last: {'$NAME' or '&NAME': value}
        self.auto = {}  # DOMAIN, TABLE, CHAIN where a value is read
        self.warnings = []  # "file:line:col: warning: ..." lines
        self.resolving = set()  # host names @resolve asked for: what `refresh` pins

    def define(self, name: str, value, pos) -> None:
        self.values[name] = value
        self.defined_at[name] = pos

    def define_local(self, name: str, value) -> None:
        self.scopes[-1]["$" + name] = value

    def function(self, call) -> FuncDef:
        for scope in reversed(self.scopes):
            if call.name in scope:
                return scope[call.name]
        if call.name in self.functions:
            return self.functions[call.name]
        raise ConfigError(call.pos, f"undefined function '{call.name}'")

    def lookup(self, name: str, pos):
        for scope in reversed(self.scopes):
            if "$" + name in scope:
                return scope["$" + name]
        if name in self.values:
            self.used.add(name)
            return self.values[name]
        if name in self.auto:
            value = self.auto[name]
            if value is None:
                raise ConfigError(pos, f"'${name}' has no single value here (a rule for both domains, or "
                                       "no chain yet): say 'domain ip' or 'domain ip6' first")
            return Atom("word", value, pos)
        raise ConfigError(pos, f"undefined variable '${name}'")

    def is_defined(self, name: str) -> bool:
        return name in self.values or any("$" + name in scope for scope in self.scopes)

    def expand(self, atom) -> list:
        """The atoms a value stands for: variables replaced, lists flattened, calls made."""
        if isinstance(atom, ListNode):
            out = []
            for item in atom.items:
                out.extend(self.expand(item))
            return out
        if isinstance(atom, Call):
            if atom.name.startswith("&"):
                raise ConfigError(atom.pos, f"'{atom.name}' gives rules, not a value: call it where a rule "
                                            "or a keyword may stand")
            return call_builtin(self, atom)
        if atom.kind == "qstring":
            return [Atom("string", self.interpolate(atom), atom.pos)]
        if atom.kind != "var":
            return [atom]
        value = self.lookup(atom.text, atom.pos)
        return list(value) if isinstance(value, list) else [value]

    def interpolate(self, atom) -> str:
        """A double-quoted string with its $variables replaced (a list by its values and spaces)."""
        import re  # only for double-quoted strings

        def value(m):
            return " ".join(a.text for a in self.expand(Atom("var", m.group(1), atom.pos)))
        return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", value, atom.text)

    def evaluate(self, node) -> object:
        """The value of a @def right-hand side, evaluated where it stands."""
        expanded = self.expand(node)
        if isinstance(node, Call):
            return expanded[0] if len(expanded) == 1 else expanded
        if isinstance(node, ListNode) or node.kind == "var" and isinstance(self.lookup(node.text, node.pos), list):
            return expanded
        return expanded[0]
