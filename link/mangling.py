"""Patterns for Rust v0 symbol names that hold across builds.

A v0 name spells a function's whole path and its type arguments, but also each crate's
disambiguator (a hash that changes with the profile, the compiler and the dependencies)
and back-references, which are byte offsets into the name and so shift when a hash
changes length. Both become `*`; what remains tells one generic instance from another.
The grammar is rustc's: RFC 2603, "Rust Symbol Name Mangling v0".
"""

import re

BASIC_TYPES = set("abcdefhijlmnostuvxyzp")
DECIMAL = re.compile(r"0|[1-9][0-9]*")
BASE62 = re.compile(r"[0-9a-zA-Z]*_")


class Unreadable(Exception):
    pass


class Rewriter:
    """Walks one v0 name, copying it with the unstable parts replaced by '*'."""

    def __init__(self, name):
        self.name, self.at, self.out = name, 0, []

    def peek(self):
        return self.name[self.at:self.at + 1]

    def take(self, count=1):
        text = self.name[self.at:self.at + count]
        if len(text) < count:
            raise Unreadable("name ends early")
        self.at += count
        self.out.append(text)

    def base62(self, hide=False):
        match = BASE62.match(self.name, self.at)
        if not match:
            raise Unreadable("base-62 number")
        self.out.append("*_" if hide else match.group())
        self.at = match.end()

    def tagged_base62(self, hide=False):
        self.take()
        self.base62(hide)

    def optional(self, tag, hide=False):
        """A tagged base-62 number (a disambiguator, lifetime or binder) if one is next."""
        if self.peek() == tag:
            self.tagged_base62(hide)

    def identifier(self):
        self.optional("s")
        self.undisambiguated()

    def undisambiguated(self):
        if self.peek() == "u":
            self.take()
        match = DECIMAL.match(self.name, self.at)
        if not match:
            raise Unreadable("identifier")
        self.take(len(match.group()))
        if self.peek() == "_":
            self.take()
        self.take(int(match.group()))

    def path(self):
        tag = self.peek()
        if tag == "C":  # crate root: its disambiguator is the crate's hash
            self.take()
            self.optional("s", hide=True)
            self.undisambiguated()
        elif tag == "M":  # inherent impl
            self.take()
            self.impl_path()
            self.type()
        elif tag == "X":  # trait impl
            self.take()
            self.impl_path()
            self.type()
            self.path()
        elif tag == "Y":  # trait definition
            self.take()
            self.type()
            self.path()
        elif tag == "N":  # nested path: namespace, parent, name
            self.take(2)
            self.path()
            self.identifier()
        elif tag == "I":  # generic arguments
            self.take()
            self.path()
            while self.peek() != "E":
                self.generic_argument()
            self.take()
        elif tag == "B":
            self.tagged_base62(hide=True)
        else:
            raise Unreadable(f"path tag {tag!r}")

    def impl_path(self):
        self.optional("s")
        self.path()

    def generic_argument(self):
        if self.peek() == "L":
            self.tagged_base62()
        elif self.peek() == "K":
            self.take()
            self.const()
        else:
            self.type()

    def const(self):
        if self.peek() == "p":
            self.take()
        elif self.peek() == "B":
            self.tagged_base62(hide=True)
        else:
            self.type()
            if self.peek() == "n":
                self.take()
            self.base62()

    def binder(self):
        self.optional("G")

    def type(self):
        tag = self.peek()
        if tag in BASIC_TYPES:
            self.take()
        elif tag in "CMXYNI":
            self.path()
        elif tag == "B":
            self.tagged_base62(hide=True)
        elif tag == "A":  # array
            self.take()
            self.type()
            self.const()
        elif tag in "SPO":  # slice, pointers
            self.take()
            self.type()
        elif tag in "RQ":  # references
            self.take()
            self.optional("L")
            self.type()
        elif tag == "T":  # tuple
            self.take()
            while self.peek() != "E":
                self.type()
            self.take()
        elif tag == "F":  # fn pointer
            self.take()
            self.binder()
            if self.peek() == "U":
                self.take()
            if self.peek() == "K":
                self.take()
                if self.peek() == "C":
                    self.take()
                else:
                    self.undisambiguated()
            while self.peek() != "E":
                self.type()
            self.take()
        elif tag == "D":  # dyn Trait + ... + 'lifetime
            self.take()
            self.binder()
            while self.peek() != "E":
                self.path()
                while self.peek() == "p":
                    self.take()
                    self.undisambiguated()
                    self.type()
            self.take()
            self.tagged_base62()
        else:
            raise Unreadable(f"type tag {tag!r}")


def stable_pattern(symbol):
    """A v0 name with its hashes and back-references as '*'. A '.suffix' (the number of
    an LLVM clone) becomes '*' as well. A name the walk cannot follow keeps what it read,
    then '*'."""
    name, dot, _ = symbol.partition(".")
    rewriter = Rewriter(name)
    try:
        rewriter.take(2)  # "_R"
        if rewriter.peek().isdigit():
            raise Unreadable("encoding version")
        rewriter.path()
        if rewriter.at < len(name):
            rewriter.path()  # the crate that instantiated it
        if rewriter.at != len(name):
            raise Unreadable("trailing characters")
        return "".join(rewriter.out) + ("*" if dot else "")
    except Unreadable:
        return "".join(rewriter.out) + "*"
