"""Syntax of the ferm-style config language: text in, a tree of statements out.

Pure functions over a position, in the manner of a small hand-written parser: the
lexer yields tokens with line and column, the parser builds statements and never
interprets keywords (that is the compiler's job), so every error names file:line:col.

    file       := statement*
    statement  := '@def' VAR '=' value ';'
                | element* ( ';' | '{' statement* '}' )
    element    := WORD | STRING | VAR | '!' | list
    list       := '(' ( WORD | STRING | VAR )* ')'
    value      := WORD | STRING | VAR | list
"""

import re
from collections import namedtuple

from .errors import ConfigError, Pos

# A word is printable ASCII but for ;(){}=!, the quotes, '#' and '$'. (Spelt
# as what it is rather than what it is not: the negated form takes ~2 ms to compile.)
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"[^"\n]*"|'[^'\n]*')
  | (?P<punct>[;(){}=!])
  | (?P<word>[%&*-:<>-z|~]+)
    """,
    re.VERBOSE,
)

# kind: word, string, var, punct, eof; text: strings without their quotes, variables without '$'
Token = namedtuple("Token", "kind text pos")

# A word, a quoted string or a variable reference (kind: word, string, var).
Atom = namedtuple("Atom", "kind text pos")

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
    if token.kind == "string":
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
            elif kind == "string":
                append(Token("string", m.group()[1:-1], Pos(filename, lineno, start + 1)))
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
    raise ConfigError(pos, f"unexpected character {ch!r}")


def parse(text: str, filename: str) -> tuple:
    """Parse one file into a tuple of Def and Statement."""
    tokens = tokenize(text, filename)
    statements, i = _statements(tokens, 0, top=True)
    return tuple(statements)


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
        if tok.kind == "word" and tok.text.startswith("@"):
            if tok.text != "@def":
                raise ConfigError(tok.pos, f"unknown directive {tok.text!r}: only '@def' is supported")
            if not top:
                raise ConfigError(tok.pos, "'@def' is allowed only at the top level of a file, not inside a block")
            stmt, i = _def(tokens, i + 1, tok.pos)
        else:
            stmt, i = _statement(tokens, i)
        if stmt is not None:
            out.append(stmt)


def _def(tokens: list, i: int, start: Pos):
    tok = tokens[i]
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


def _value(tokens: list, i: int):
    tok = tokens[i]
    if tok.kind in ("word", "string", "var"):
        return Atom(tok.kind, tok.text, tok.pos), i + 1
    if tok.kind == "punct" and tok.text == "(":
        return _list(tokens, i)
    raise ConfigError(tok.pos, f"expected a value, got {describe(tok)}")


def _list(tokens: list, i: int):
    start = tokens[i].pos
    items = []
    i += 1
    while True:
        tok = tokens[i]
        if tok.kind in ("word", "string", "var"):
            items.append(Atom(tok.kind, tok.text, tok.pos))
            i += 1
        elif tok.kind == "punct" and tok.text == ")":
            return ListNode(tuple(items), start), i + 1
        elif tok.kind == "eof":
            raise ConfigError(start, "this '(' is never closed")
        else:
            raise ConfigError(tok.pos, f"expected a list item or ')', got {describe(tok)}")


def _statement(tokens: list, i: int):
    start = tokens[i].pos
    elements = []
    while True:
        tok = tokens[i]
        if tok.kind in ("word", "string", "var"):
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
            elif tok.text == "}":
                raise ConfigError(tok.pos, "expected ';' or '{' to end the statement, got '}'")
            else:
                raise ConfigError(tok.pos, f"unexpected {describe(tok)}")
        else:  # eof
            raise ConfigError(tok.pos, "expected ';' or '{' to end the statement, got end of file")
