"""Syntax of the ferm-style config language: text in, a tree of statements out.

Pure functions over a position, in the manner of a small hand-written parser: the
lexer yields tokens with line and column, the parser builds statements and never
interprets keywords (that is the compiler's job), so every error names file:line:col.

    file       := statement*
    statement  := '@def' VAR '=' value ';'
                | '@def' FUNCTION '(' ( VAR ( ',' VAR )* )? ')' '=' ( block | element* ';' )
                | '@include' value ';'
                | element* ( ';' | block )
    block      := '{' statement* '}'
    element    := WORD | STRING | VAR | '!' | list | call
    list       := '(' ( WORD | STRING | VAR | list | call )* ')'
    call       := ( FUNCTION | BUILTIN ) '(' ( value* ( ',' value* )* )? ')'
    value      := WORD | STRING | VAR | list | call

FUNCTION is '&NAME', BUILTIN '@NAME' (as @eq, @cat, @resolve). A comma between two words
outside a call joins them into one ('ESTABLISHED,RELATED'), as iptables writes lists.
"""

import re
from collections import namedtuple

from .errors import ConfigError, Pos

# A word is printable ASCII but for ;(){}=!, the comma, the quotes, the backtick, '#' and
# '$'. (Spelt
# as what it is rather than what it is not: the negated form takes ~2 ms to compile.)
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'[^'\n]*')
  | (?P<qstring>"[^"\n]*")
  | (?P<punct>[;(){}=!,])
  | (?P<word>[%&*+\-./0-9:<>-_a-z|~]+)
    """,
    re.VERBOSE,
)

# kind: word, string, qstring, var, punct, eof; text: strings without their quotes,
# variables without '$'. A qstring (double quotes) has its $variables replaced, as in ferm.
Token = namedtuple("Token", "kind text pos")

# A word, a quoted string or a variable reference (kind: word, string, qstring, var).
Atom = namedtuple("Atom", "kind text pos")

# A call of a function of the user's ('&NAME') or a built-in ('@eq'); args: a tuple of
# values (Atom, ListNode, Call), one per comma-separated argument
Call = namedtuple("Call", "name args pos")

# '@def &NAME($a, $b) = ...': params, the names without '$'; body: a tuple of statements
# (a block) or None; fragment: the elements of a rule fragment, spliced into the calling rule
FuncDef = namedtuple("FuncDef", "name params body fragment pos")

# '@include value;'
Include = namedtuple("Include", "value pos")

# items: a tuple of Atom
ListNode = namedtuple("ListNode", "items pos")

# a '!' that negates what follows
Bang = namedtuple("Bang", "pos")

# value: an Atom or a ListNode
Def = namedtuple("Def", "name value pos")

# elements: of Atom, ListNode, Bang; body: the statements of a '{ }' block, or None for ';';
# pos: where the statement starts; end: its ';' or '{'
Statement = namedtuple("Statement", "elements body pos end")


def describe(token: Token) -> str:
    if token.kind == "eof":
        return "end of file"
    if token.kind in ("string", "qstring"):
        return f"string {token.text!r}"
    if token.kind == "var":
        return f"'${token.text}'"
    return f"'{token.text}'"


def tokenize(text: str, filename: str) -> list:
    """Tokens with their places; line by line, since no token spans a line."""
    tokens = []
    append = tokens.append
    lineno = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        pos = 0
        for m in _TOKEN.finditer(line):
            start = m.start()
            if start != pos:
                _bad_character(line, pos, Pos(filename, lineno, pos + 1))
            pos = m.end()
            kind = m.lastgroup
            if kind in ("space", "comment"):
                continue
            if kind == "var":
                append(Token("var", m.group()[1:], Pos(filename, lineno, start + 1)))
            elif kind in ("string", "qstring"):
                append(Token(kind, m.group()[1:-1], Pos(filename, lineno, start + 1)))
            else:
                append(Token(kind, m.group(), Pos(filename, lineno, start + 1)))
        if pos != len(line):
            _bad_character(line, pos, Pos(filename, lineno, pos + 1))
    last = text.rsplit("\n", 1)[-1]
    tokens.append(Token("eof", "", Pos(filename, max(lineno, 1), len(last) + 1)))
    return tokens


def _bad_character(line: str, i: int, pos: Pos):
    ch = line[i]
    if ch in "\"'":
        raise ConfigError(pos, "unterminated string: a string must close on the same line")
    if ch == "`":
        raise ConfigError(pos, "backticks run a shell command, which vpn-firewall never does (nothing runs a "
                               "program at boot): write the values out, or use @include of a file")
    raise ConfigError(pos, f"unexpected character {ch!r}")


def parse(text: str, filename: str) -> tuple:
    """Parse one file into a tuple of Def and Statement."""
    tokens = tokenize(text, filename)
    statements, i = _statements(tokens, 0, top=True)
    return tuple(statements)


# Directives that would run programs or that vpn-firewall has no use for, and why.
REFUSED = {
    "@hook": "'@hook' runs shell commands, which vpn-firewall never does (nothing runs a program at boot)",
    "@preserve": "'@preserve' is not needed: vpn-firewall keeps its rules in chains of its own and never "
                 "touches other tools' chains",
}
VALUE_TOKENS = ("word", "string", "qstring", "var")


def _statements(tokens: list, i: int, top: bool):
    out = []
    while True:
        tok = tokens[i]
        if tok.kind == "eof":
            if not top:
                raise ConfigError(tok.pos, "expected '}' to close the block, got end of file")
            return out, i
        if tok.kind == "punct" and tok.text == "}":
            if top:
                raise ConfigError(tok.pos, "unexpected '}': no block is open")
            return out, i
        if tok.kind == "word" and tok.text == "@def":
            stmt, i = _def(tokens, i + 1, tok.pos)
        elif tok.kind == "word" and tok.text == "@include":
            value, i = _value(tokens, i + 1)
            end = tokens[i]
            if not (end.kind == "punct" and end.text == ";"):
                raise ConfigError(end.pos, f"expected ';' after the file to include, got {describe(end)}")
            stmt, i = Include(value, tok.pos), i + 1
        elif tok.kind == "word" and tok.text in REFUSED:
            raise ConfigError(tok.pos, REFUSED[tok.text])
        else:
            stmt, i = _statement(tokens, i)
        if stmt is not None:
            out.append(stmt)


def _def(tokens: list, i: int, start: Pos):
    tok = tokens[i]
    if tok.kind == "word" and tok.text.startswith("&") and len(tok.text) > 1:
        return _function(tokens, i, start)
    if tok.kind != "var":
        raise ConfigError(tok.pos, f"expected a variable name such as '$VPN_SERVERS' after '@def', got {describe(tok)}")
    name = tok.text
    eq = tokens[i + 1]
    if not (eq.kind == "punct" and eq.text == "="):
        raise ConfigError(eq.pos, f"expected '=' after '${name}', got {describe(eq)}")
    value, i = _value(tokens, i + 2)
    end = tokens[i]
    if not (end.kind == "punct" and end.text == ";"):
        raise ConfigError(end.pos, f"expected ';' after the value of '${name}', got {describe(end)}")
    return Def(name, value, start), i + 1


def _function(tokens: list, i: int, start: Pos):
    name = tokens[i].text
    opening = tokens[i + 1]
    if not (opening.kind == "punct" and opening.text == "("):
        raise ConfigError(opening.pos, f"expected '(' and the parameters after '{name}', got {describe(opening)}")
    params, i = [], i + 2
    while not (tokens[i].kind == "punct" and tokens[i].text == ")"):
        tok = tokens[i]
        if tok.kind != "var":
            raise ConfigError(tok.pos, f"expected a parameter such as '$port' or ')', got {describe(tok)}")
        if tok.text in params:
            raise ConfigError(tok.pos, f"parameter '${tok.text}' given twice")
        params.append(tok.text)
        i += 1
        if tokens[i].kind == "punct" and tokens[i].text == ",":
            i += 1
    eq = tokens[i + 1]
    if not (eq.kind == "punct" and eq.text == "="):
        raise ConfigError(eq.pos, f"expected '=' after the parameters of '{name}', got {describe(eq)}")
    i += 2
    if tokens[i].kind == "punct" and tokens[i].text == "{":
        body, j = _statements(tokens, i + 1, top=False)
        return FuncDef(name, tuple(params), tuple(body), None, start), j + 1
    stmt, i = _statement(tokens, i)
    if stmt is None or stmt.body is not None:
        where = tokens[i - 1].pos
        raise ConfigError(where, f"the body of '{name}' is a block '{{ ... }}' or a rule fragment ending in ';'")
    return FuncDef(name, tuple(params), None, stmt.elements, start), i


def _value(tokens: list, i: int):
    tok = tokens[i]
    if tok.kind in VALUE_TOKENS:
        if _is_call(tokens, i):
            return _call(tokens, i)
        return Atom(tok.kind, tok.text, tok.pos), i + 1
    if tok.kind == "punct" and tok.text == "(":
        return _list(tokens, i)
    raise ConfigError(tok.pos, f"expected a value, got {describe(tok)}")


def _is_call(tokens: list, i: int) -> bool:
    tok, after = tokens[i], tokens[i + 1]
    return (tok.kind == "word" and tok.text[:1] in "&@" and len(tok.text) > 1
            and after.kind == "punct" and after.text == "(")


def _call(tokens: list, i: int):
    """A call: its comma-separated arguments, each one value (several values make a list)."""
    name, start = tokens[i].text, tokens[i].pos
    args, current, i = [], [], i + 2
    while True:
        tok = tokens[i]
        if tok.kind == "punct" and tok.text in ",)":
            if tok.text == "," or current or args:
                if not current:
                    raise ConfigError(tok.pos, f"an argument of {name} is missing before {describe(tok)}")
                args.append(current[0] if len(current) == 1 else ListNode(tuple(current), current[0].pos))
                current = []
            if tok.text == ")":
                return Call(name, tuple(args), start), i + 1
            i += 1
        elif tok.kind == "eof":
            raise ConfigError(start, f"the '(' of {name} is never closed")
        else:
            value, i = _value(tokens, i)
            current.append(value)


def _list(tokens: list, i: int):
    start = tokens[i].pos
    items = []
    i += 1
    while True:
        tok = tokens[i]
        if tok.kind in VALUE_TOKENS or tok.kind == "punct" and tok.text == "(":
            value, i = _value(tokens, i)
            items.append(value)
        elif tok.kind == "punct" and tok.text == ",":
            i = _join_comma(tokens, i, items, "a list")
        elif tok.kind == "punct" and tok.text == ")":
            return ListNode(tuple(items), start), i + 1
        elif tok.kind == "eof":
            raise ConfigError(start, "this '(' is never closed")
        else:
            raise ConfigError(tok.pos, f"expected a list item or ')', got {describe(tok)}")


def _join_comma(tokens: list, i: int, items: list, where: str) -> int:
    """'a,b' as iptables writes a list: one word. Anywhere else a comma is an error."""
    before, after = items[-1] if items else None, tokens[i + 1]
    if isinstance(before, Atom) and before.kind == "word" and after.kind == "word" and not _is_call(tokens, i + 1):
        items[-1] = Atom("word", f"{before.text},{after.text}", before.pos)
        return i + 2
    raise ConfigError(tokens[i].pos, f"unexpected ',' in {where}: separate values with spaces")


def _statement(tokens: list, i: int):
    start = tokens[i].pos
    elements = []
    while True:
        tok = tokens[i]
        if tok.kind in VALUE_TOKENS:
            if _is_call(tokens, i):
                call, i = _call(tokens, i)
                elements.append(call)
            else:
                elements.append(Atom(tok.kind, tok.text, tok.pos))
                i += 1
        elif tok.kind == "punct":
            if tok.text == ";":
                if not elements:
                    return None, i + 1  # an empty statement, as after a block
                return Statement(tuple(elements), None, start, tok.pos), i + 1
            if tok.text == "{":
                body, j = _statements(tokens, i + 1, top=False)
                return Statement(tuple(elements), tuple(body), start, tok.pos), j + 1
            if tok.text == "(":
                node, i = _list(tokens, i)
                elements.append(node)
            elif tok.text == "!":
                elements.append(Bang(tok.pos))
                i += 1
            elif tok.text == ",":
                i = _join_comma(tokens, i, elements, "a rule")
            elif tok.text == "}":
                raise ConfigError(tok.pos, "expected ';' or '{' to end the statement, got '}'")
            else:
                raise ConfigError(tok.pos, f"unexpected {describe(tok)}")
        else:  # eof
            raise ConfigError(tok.pos, "expected ';' or '{' to end the statement, got end of file")
