"""OPA's `graphql.*` builtins over graphql-core, answering in OPA's AST shape.

OPA parses with gqlparser and returns its AST as JSON: Go field names (`Operations`,
`SelectionSet`, `VariableDefinitions`, ...), value kinds as gqlparser's `ValueKind`
numbers, and every `Position`, null, empty list and empty object pruned away
(`pruneIrrelevantGraphQLASTNodes` in OPA's `topdown/graphql.go`). graphql-core parses the
same grammar (GraphQL spec, October 2021); this module maps its nodes to that shape.

Where gqlparser and graphql-core disagree, gqlparser's answer is the one kept:

- an empty query document is valid (gqlparser accepts zero definitions);
- an extension of a type that the schema does not define defines it (gqlparser, for
  federated schemas);
- a schema without a `Query` type still loads (gqlparser requires no root type);
- selection sets and field lists must not be empty (GraphQL spec §2.4, §3.6).

An AST object given instead of source text (OPA 0.50+) is printed back to GraphQL text
and parsed again; an object that is not in gqlparser's shape is an error.
"""

from __future__ import annotations

import json
import re
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLSchema,
    TypeInfo,
    build_ast_schema,
    parse,
    specified_rules,
    validate_schema,
)
from graphql import language as gl
from graphql.language import visit
from graphql.language.visitor import ParallelVisitor
from graphql.utilities import TypeInfoVisitor
from graphql.validation import ValidationContext

# Bounds the work done on hostile input (OPA has none; a longer document is an error).
MAX_SOURCE = 1 << 20

# gqlparser's `ValueKind` (ast/value.go), in its declaration order.
_VARIABLE, _INT, _FLOAT, _STRING, _BLOCK, _BOOLEAN, _NULL, _ENUM, _LIST, _OBJECT = range(10)

# gqlparser's `DefinitionKind` for each type definition and extension node.
_KINDS: dict[type[gl.Node], str] = {
    gl.ScalarTypeDefinitionNode: "SCALAR",
    gl.ObjectTypeDefinitionNode: "OBJECT",
    gl.InterfaceTypeDefinitionNode: "INTERFACE",
    gl.UnionTypeDefinitionNode: "UNION",
    gl.EnumTypeDefinitionNode: "ENUM",
    gl.InputObjectTypeDefinitionNode: "INPUT_OBJECT",
    gl.ScalarTypeExtensionNode: "SCALAR",
    gl.ObjectTypeExtensionNode: "OBJECT",
    gl.InterfaceTypeExtensionNode: "INTERFACE",
    gl.UnionTypeExtensionNode: "UNION",
    gl.EnumTypeExtensionNode: "ENUM",
    gl.InputObjectTypeExtensionNode: "INPUT_OBJECT",
}
_DEFINITION_OF: dict[type[gl.Node], type[gl.Node]] = {
    gl.ScalarTypeExtensionNode: gl.ScalarTypeDefinitionNode,
    gl.ObjectTypeExtensionNode: gl.ObjectTypeDefinitionNode,
    gl.InterfaceTypeExtensionNode: gl.InterfaceTypeDefinitionNode,
    gl.UnionTypeExtensionNode: gl.UnionTypeDefinitionNode,
    gl.EnumTypeExtensionNode: gl.EnumTypeDefinitionNode,
    gl.InputObjectTypeExtensionNode: gl.InputObjectTypeDefinitionNode,
}
_BUILT_IN_SCALARS = frozenset({"String", "Int", "Float", "Boolean", "ID"})
_PUNCTUATOR = re.compile(r"[!$&()\[\]{}:=@|.]+")
_QUOTED = re.compile(r"'([^']*)'")
_COORDINATE = re.compile(r'Argument "(\w+)\.(\w+)\((\w+):\)" of type')
_STRING_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"')


class GraphQLFailure(Exception):
    """A document that does not parse, load or validate; the text is OPA's message."""


# -- errors, in gqlparser's words --------------------------------------------------------


def _words(message: str) -> str:
    """graphql-core's message in gqlparser's words: no `Syntax Error:` prefix, no final
    full stop (OPA trims it), punctuators bare and names in double quotes."""
    text = message.removeprefix("Syntax Error: ").rstrip(".")
    if text.startswith("Unexpected variable "):
        return "Unexpected $"
    if text.startswith(("Unterminated string", "Unexpected character")):
        return "Unexpected <Invalid>"

    def quote(match: re.Match[str]) -> str:
        inner = match.group(1)
        return inner if _PUNCTUATOR.fullmatch(inner) else f'"{inner}"'

    text = _QUOTED.sub(quote, text)
    # graphql-core names an argument by its coordinate, gqlparser by field and name.
    return _COORDINATE.sub(r'Field "\2" argument "\3" of type', text)


def _failure(error: GraphQLError, where: str) -> GraphQLFailure:
    text = _words(error.message)
    if not error.locations:
        return GraphQLFailure(f"{text} in {where}")
    line, column = error.locations[0].line, error.locations[0].column
    body = error.source.body if error.source is not None else ""
    at = next(iter(error.positions)) if error.positions else -1
    if text == "Expected Name, found }" and body[:at].rstrip(" \t\r\n,").endswith("{"):
        # An empty `{}`: gqlparser's list parser reports the missing first item.
        text = "expected at least one definition, found }"
    elif text.startswith("Unexpected description") and 0 <= at < len(body):
        # gqlparser reads a misplaced description as an unexpected string token, and
        # places a string token one column in, after its opening quote.
        string = _STRING_TOKEN.match(body, at)
        text = f'Unexpected String "{json.loads(string.group(0)) if string else ""}"'
        column += 1
    elif text.startswith("Unexpected String"):
        column += 1
    return GraphQLFailure(f"{text} in {where} at location {line}:{column}")


def _parse(source: str, where: str) -> gl.DocumentNode:
    if len(source) > MAX_SOURCE:
        raise GraphQLFailure(f"document longer than {MAX_SOURCE} characters")
    try:
        return parse(
            source,
            experimental_fragment_arguments=True,
            allow_empty_selection_sets=False,
        )
    except GraphQLError as exc:
        raise _failure(exc, where) from None
    except RecursionError:
        raise GraphQLFailure(f"document nested too deeply in {where}") from None


def _unexpected(node: gl.Node, where: str) -> GraphQLFailure:
    # gqlparser reads only one language per document: the first word of another
    # definition is an unexpected name (its `Unexpected Name "type"`).
    loc = node.loc
    word = loc.start_token.value if loc is not None else node.kind
    line, column = (loc.start_token.line, loc.start_token.column) if loc else (0, 0)
    return GraphQLFailure(f'Unexpected Name "{word}" in {where} at location {line}:{column}')


def parse_query_document(source: str) -> gl.DocumentNode:
    if not source.strip():
        return gl.DocumentNode(definitions=())
    document = _parse(source, "GraphQL string")
    for definition in document.definitions:
        if not isinstance(definition, gl.ExecutableDefinitionNode):
            raise _unexpected(definition, "GraphQL string")
    return document


def parse_schema_document(source: str) -> gl.DocumentNode:
    if not source.strip():
        return gl.DocumentNode(definitions=())
    document = _parse(source, "GraphQL string")
    for definition in document.definitions:
        if isinstance(definition, gl.ExecutableDefinitionNode):
            raise _unexpected(definition, "GraphQL string")
    return document


# -- graphql-core nodes -> gqlparser's JSON shape ---------------------------------------


def _prune(value: Any) -> Any:
    """OPA's `pruneIrrelevantGraphQLASTNodes`: drop nulls and empty lists and objects,
    recursively (after pruning the inside)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _prune(item)
            if item is None or (isinstance(item, list | dict) and not item):
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        kept = [_prune(item) for item in value]
        return [
            item
            for item in kept
            if item is not None and not (isinstance(item, list | dict) and not item)
        ]
    return value


def _text(node: gl.NameNode | gl.StringValueNode | None) -> str:
    return node.value if node is not None else ""


def _type(node: gl.TypeNode | None, non_null: bool = False) -> dict[str, Any] | None:
    if node is None:
        return None
    if isinstance(node, gl.NonNullTypeNode):
        return _type(node.type, non_null=True)
    if isinstance(node, gl.ListTypeNode):
        return {"NamedType": "", "Elem": _type(node.type), "NonNull": non_null}
    assert isinstance(node, gl.NamedTypeNode)
    return {"NamedType": node.name.value, "NonNull": non_null}


def _value(node: gl.ValueNode | None) -> dict[str, Any] | None:
    if node is None:
        return None
    children: list[dict[str, Any]] = []
    raw = ""
    if isinstance(node, gl.VariableNode):
        kind, raw = _VARIABLE, node.name.value
    elif isinstance(node, gl.IntValueNode):
        kind, raw = _INT, node.value
    elif isinstance(node, gl.FloatValueNode):
        kind, raw = _FLOAT, node.value
    elif isinstance(node, gl.StringValueNode):
        kind, raw = (_BLOCK if node.block else _STRING), node.value
    elif isinstance(node, gl.BooleanValueNode):
        kind, raw = _BOOLEAN, "true" if node.value else "false"
    elif isinstance(node, gl.NullValueNode):
        kind, raw = _NULL, "null"
    elif isinstance(node, gl.EnumValueNode):
        kind, raw = _ENUM, node.value
    elif isinstance(node, gl.ListValueNode):
        kind = _LIST
        children = [{"Name": "", "Value": _value(item)} for item in node.values]
    elif isinstance(node, gl.ObjectValueNode):
        kind = _OBJECT
        children = [{"Name": f.name.value, "Value": _value(f.value)} for f in node.fields]
    else:
        raise GraphQLFailure(f"unsupported value node {node.kind}")
    return {"Raw": raw, "Children": children, "Kind": kind, "ExpectedTypeHasDefault": False}


def _arguments(nodes: Any) -> list[dict[str, Any]]:
    return [{"Name": a.name.value, "Value": _value(a.value)} for a in nodes or ()]


def _directives(nodes: Any) -> list[dict[str, Any]]:
    # `Location` is set by validation only; a parsed directive has the empty location.
    return [
        {"Name": d.name.value, "Arguments": _arguments(d.arguments), "Location": ""}
        for d in nodes or ()
    ]


def _selections(node: gl.SelectionSetNode | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for selection in node.selections if node is not None else ():
        if isinstance(selection, gl.FieldNode):
            out.append(
                {
                    "Alias": _text(selection.alias) or selection.name.value,
                    "Name": selection.name.value,
                    "Arguments": _arguments(selection.arguments),
                    "Directives": _directives(selection.directives),
                    "SelectionSet": _selections(selection.selection_set),
                }
            )
        elif isinstance(selection, gl.FragmentSpreadNode):
            if getattr(selection, "arguments", None):
                raise GraphQLFailure("fragment spread arguments are not in OPA's AST")
            out.append(
                {"Name": selection.name.value, "Directives": _directives(selection.directives)}
            )
        else:
            assert isinstance(selection, gl.InlineFragmentNode)
            condition = selection.type_condition
            out.append(
                {
                    "TypeCondition": condition.name.value if condition else "",
                    "Directives": _directives(selection.directives),
                    "SelectionSet": _selections(selection.selection_set),
                }
            )
    return out


def _variables(nodes: Any) -> list[dict[str, Any]]:
    return [
        {
            "Variable": v.variable.name.value,
            "Type": _type(v.type),
            "DefaultValue": _value(v.default_value),
            "Directives": _directives(v.directives),
            "Used": False,
        }
        for v in nodes or ()
    ]


def query_ast(document: gl.DocumentNode) -> dict[str, Any]:
    """A parsed query as OPA's `graphql.parse_query` returns it."""
    operations: list[dict[str, Any]] = []
    fragments: list[dict[str, Any]] = []
    for node in document.definitions:
        if isinstance(node, gl.OperationDefinitionNode):
            operations.append(
                {
                    "Operation": node.operation.value,
                    "Name": _text(node.name),
                    "VariableDefinitions": _variables(node.variable_definitions),
                    "Directives": _directives(node.directives),
                    "SelectionSet": _selections(node.selection_set),
                }
            )
        elif isinstance(node, gl.FragmentDefinitionNode):
            fragments.append(
                {
                    "Name": node.name.value,
                    "VariableDefinition": _variables(node.variable_definitions),
                    "TypeCondition": node.type_condition.name.value,
                    "Directives": _directives(node.directives),
                    "SelectionSet": _selections(node.selection_set),
                }
            )
    result = _prune({"Operations": operations, "Fragments": fragments})
    assert isinstance(result, dict)
    return result


def _input_values(nodes: Any) -> list[dict[str, Any]]:
    return [
        {
            "Description": _text(a.description),
            "Name": a.name.value,
            "DefaultValue": _value(a.default_value),
            "Type": _type(a.type),
            "Directives": _directives(a.directives),
        }
        for a in nodes or ()
    ]


def _definition(node: Any) -> dict[str, Any]:
    fields: list[dict[str, Any]] = []
    for f in getattr(node, "fields", None) or ():
        if isinstance(f, gl.FieldDefinitionNode):
            fields.append(
                {
                    "Description": _text(f.description),
                    "Name": f.name.value,
                    "Arguments": _input_values(f.arguments),
                    "Type": _type(f.type),
                    "Directives": _directives(f.directives),
                }
            )
        else:  # an input object's field: gqlparser's FieldDefinition with a default
            fields.extend(_input_values([f]))
    return {
        "Kind": _KINDS[type(node)],
        "Description": _text(getattr(node, "description", None)),
        "Name": node.name.value,
        "Directives": _directives(node.directives),
        "Interfaces": [i.name.value for i in getattr(node, "interfaces", None) or ()],
        "Fields": fields,
        "Types": [t.name.value for t in getattr(node, "types", None) or ()],
        "EnumValues": [
            {
                "Description": _text(v.description),
                "Name": v.name.value,
                "Directives": _directives(v.directives),
            }
            for v in getattr(node, "values", None) or ()
        ],
        "BuiltIn": False,
    }


def schema_ast(document: gl.DocumentNode) -> dict[str, Any]:
    """A parsed schema as OPA's `graphql.parse_schema` returns it (without gqlparser's
    prelude of built-in types, as OPA leaves it out)."""
    out: dict[str, list[dict[str, Any]]] = {
        "Schema": [],
        "SchemaExtension": [],
        "Directives": [],
        "Definitions": [],
        "Extensions": [],
    }
    for node in document.definitions:
        if isinstance(node, gl.SchemaDefinitionNode | gl.SchemaExtensionNode):
            key = "Schema" if isinstance(node, gl.SchemaDefinitionNode) else "SchemaExtension"
            out[key].append(
                {
                    "Description": _text(getattr(node, "description", None)),
                    "Directives": _directives(node.directives),
                    "OperationTypes": [
                        {"Operation": t.operation.value, "Type": t.type.name.value}
                        for t in node.operation_types or ()
                    ],
                }
            )
        elif isinstance(node, gl.DirectiveDefinitionNode):
            out["Directives"].append(
                {
                    "Description": _text(node.description),
                    "Name": node.name.value,
                    "Arguments": _input_values(node.arguments),
                    "Locations": [loc.value for loc in node.locations],
                    "IsRepeatable": node.repeatable,
                }
            )
        elif isinstance(node, gl.TypeExtensionNode):
            out["Extensions"].append(_definition(node))
        else:
            out["Definitions"].append(_definition(node))
    result = _prune(out)
    assert isinstance(result, dict)
    return result


# -- gqlparser's JSON shape -> GraphQL text (for AST operands) ---------------------------
#
# Every name is checked against the grammar's Name (GraphQL spec §2.1.9) and every scalar
# against its token before it is printed, so an object cannot print as another document.

_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
_SCALAR_TOKENS = {
    _INT: re.compile(r"-?(?:0|[1-9][0-9]*)"),
    _FLOAT: re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"),
    _BOOLEAN: re.compile(r"true|false"),
    _NULL: re.compile(r"null"),
    _ENUM: _NAME,
}
_OPERATIONS = frozenset({"query", "mutation", "subscription"})


def _get(obj: Any, key: str, kind: type, default: Any) -> Any:
    if not isinstance(obj, dict):
        raise GraphQLFailure(f"AST object: expected an object holding {key}")
    value = obj.get(key, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise GraphQLFailure(f"AST object: {key} must be {kind.__name__}")
    return value


def _name(obj: Any, key: str = "Name", *, empty: bool = False) -> str:
    value: str = _get(obj, key, str, "")
    if (empty and value == "") or _NAME.fullmatch(value):
        return value
    raise GraphQLFailure(f"AST object: {key} {value!r} is not a GraphQL name")


def _names(obj: Any, key: str) -> list[str]:
    items: list[Any] = _get(obj, key, list, [])
    for item in items:
        if not isinstance(item, str) or not _NAME.fullmatch(item):
            raise GraphQLFailure(f"AST object: {key} holds {item!r}, not a GraphQL name")
    return items


def _items(obj: Any, key: str) -> list[Any]:
    items: list[Any] = _get(obj, key, list, [])
    return items


def _print_type(t: Any) -> str:
    bang = "!" if _get(t, "NonNull", bool, False) else ""
    if isinstance(t, dict) and "Elem" in t:
        return f"[{_print_type(t['Elem'])}]{bang}"
    return _name(t, "NamedType") + bang


def _print_value(v: Any) -> str:
    kind: int = _get(v, "Kind", int, -1)
    raw: str = _get(v, "Raw", str, "")
    children = _items(v, "Children")
    if kind == _VARIABLE:
        return "$" + _name(v, "Raw")
    if kind in (_STRING, _BLOCK):
        return json.dumps(raw)
    if kind in _SCALAR_TOKENS:
        if not _SCALAR_TOKENS[kind].fullmatch(raw):
            raise GraphQLFailure(f"AST object: {raw!r} is not a value of kind {kind}")
        return raw
    if kind == _LIST:
        return "[" + ", ".join(_print_value(_get(c, "Value", dict, None)) for c in children) + "]"
    if kind == _OBJECT:
        fields = (f"{_name(c)}: {_print_value(_get(c, 'Value', dict, None))}" for c in children)
        return "{" + ", ".join(fields) + "}"
    raise GraphQLFailure(f"AST object: unknown value kind {kind}")


def _print_arguments(obj: Any) -> str:
    items = _items(obj, "Arguments")
    if not items:
        return ""
    arguments = (f"{_name(a)}: {_print_value(_get(a, 'Value', dict, None))}" for a in items)
    return "(" + ", ".join(arguments) + ")"


def _print_directives(obj: Any) -> str:
    return "".join(f" @{_name(d)}{_print_arguments(d)}" for d in _items(obj, "Directives"))


def _print_selections(obj: Any) -> str:
    parts = []
    for s in _items(obj, "SelectionSet"):
        if isinstance(s, dict) and "TypeCondition" in s:
            condition = _name(s, "TypeCondition", empty=True)
            on = f" on {condition}" if condition else ""
            parts.append(f"...{on}{_print_directives(s)} {_print_selections(s)}")
        elif isinstance(s, dict) and "Alias" in s:
            name, alias = _name(s), _name(s, "Alias")
            label = f"{alias}: " if alias != name else ""
            inner = _print_selections(s) if s.get("SelectionSet") else ""
            parts.append(f"{label}{name}{_print_arguments(s)}{_print_directives(s)} {inner}")
        else:
            parts.append(f"...{_name(s)}{_print_directives(s)}")
    return "{ " + "\n".join(parts) + " }"


def _print_variables(obj: Any, key: str) -> str:
    items = _items(obj, key)
    if not items:
        return ""
    out = []
    for v in items:
        default = ""
        if isinstance(v, dict) and "DefaultValue" in v:
            default = f" = {_print_value(v['DefaultValue'])}"
        out.append(
            f"${_name(v, 'Variable')}: {_print_type(_get(v, 'Type', dict, None))}{default}"
            f"{_print_directives(v)}"
        )
    return "(" + ", ".join(out) + ")"


def print_query(doc: dict[str, Any]) -> str:
    """GraphQL text for a query AST object in gqlparser's shape."""
    parts = []
    for op in _items(doc, "Operations"):
        operation = _get(op, "Operation", str, "query")
        if operation not in _OPERATIONS:
            raise GraphQLFailure(f"AST object: {operation!r} is not an operation type")
        parts.append(
            f"{operation} {_name(op, empty=True)}{_print_variables(op, 'VariableDefinitions')}"
            f"{_print_directives(op)} {_print_selections(op)}"
        )
    for fr in _items(doc, "Fragments"):
        parts.append(
            f"fragment {_name(fr)}{_print_variables(fr, 'VariableDefinition')}"
            f" on {_name(fr, 'TypeCondition')}{_print_directives(fr)} {_print_selections(fr)}"
        )
    return "\n".join(parts)


def _print_description(item: Any) -> str:
    text: str = _get(item, "Description", str, "")
    return f"{json.dumps(text)}\n" if text else ""


def _print_input_values(obj: Any, key: str, brackets: str = "()") -> str:
    items = _items(obj, key)
    if not items:
        return ""
    out = []
    for a in items:
        default = ""
        if isinstance(a, dict) and "DefaultValue" in a:
            default = f" = {_print_value(a['DefaultValue'])}"
        out.append(
            f"{_print_description(a)}{_name(a)}: {_print_type(_get(a, 'Type', dict, None))}"
            f"{default}{_print_directives(a)}"
        )
    return brackets[0] + "\n".join(out) + brackets[1]


_KEYWORD = {
    "SCALAR": "scalar",
    "OBJECT": "type",
    "INTERFACE": "interface",
    "UNION": "union",
    "ENUM": "enum",
    "INPUT_OBJECT": "input",
}


def _print_definition(d: Any, extend: bool) -> str:
    kind = _get(d, "Kind", str, "")
    if kind not in _KEYWORD:
        raise GraphQLFailure(f"AST object: unknown definition kind {kind!r}")
    head = ("extend " if extend else _print_description(d)) + f"{_KEYWORD[kind]} {_name(d)}"
    if interfaces := _names(d, "Interfaces"):
        head += " implements " + " & ".join(interfaces)
    head += _print_directives(d)
    if kind == "UNION" and (types := _names(d, "Types")):
        head += " = " + " | ".join(types)
    if kind == "ENUM" and (values := _items(d, "EnumValues")):
        lines = (f"{_print_description(v)}{_name(v)}{_print_directives(v)}" for v in values)
        head += " {\n" + "\n".join(lines) + "\n}"
    if kind == "INPUT_OBJECT" and _items(d, "Fields"):
        head += " " + _print_input_values(d, "Fields", "{}")
    elif kind in ("OBJECT", "INTERFACE") and (fields := _items(d, "Fields")):
        lines = (
            f"{_print_description(f)}{_name(f)}{_print_input_values(f, 'Arguments')}"
            f": {_print_type(_get(f, 'Type', dict, None))}{_print_directives(f)}"
            for f in fields
        )
        head += " {\n" + "\n".join(lines) + "\n}"
    return head


def print_schema(doc: dict[str, Any]) -> str:
    """GraphQL SDL for a schema AST object in gqlparser's shape."""
    parts = []
    for key, extend in (("Schema", False), ("SchemaExtension", True)):
        for s in _items(doc, key):
            types = []
            for t in _items(s, "OperationTypes"):
                operation = _get(t, "Operation", str, "")
                if operation not in _OPERATIONS:
                    raise GraphQLFailure(f"AST object: {operation!r} is not an operation type")
                types.append(f"{operation}: {_name(t, 'Type')}")
            body = f" {{ {' '.join(types)} }}" if types else ""
            head = "extend schema" if extend else f"{_print_description(s)}schema"
            parts.append(f"{head}{_print_directives(s)}{body}")
    for d in _items(doc, "Directives"):
        repeatable = " repeatable" if _get(d, "IsRepeatable", bool, False) else ""
        parts.append(
            f"{_print_description(d)}directive @{_name(d)}"
            f"{_print_input_values(d, 'Arguments')}{repeatable}"
            f" on {' | '.join(_names(d, 'Locations'))}"
        )
    parts.extend(_print_definition(d, False) for d in _items(doc, "Definitions"))
    parts.extend(_print_definition(d, True) for d in _items(doc, "Extensions"))
    return "\n".join(parts)


# -- loading and validating, as gqlparser does -------------------------------------------


def _orphans_defined(document: gl.DocumentNode) -> gl.DocumentNode:
    """The first extension of a type that is not defined becomes its definition
    (gqlparser's loader does this, for federated schemas)."""
    defined = {
        node.name.value for node in document.definitions if isinstance(node, gl.TypeDefinitionNode)
    } | _BUILT_IN_SCALARS
    nodes: list[gl.DefinitionNode] = []
    for node in document.definitions:
        definition = _DEFINITION_OF.get(type(node))
        if definition is not None and isinstance(node, gl.TypeExtensionNode):
            name = node.name.value
            if name not in defined:
                defined.add(name)
                fields = {k: getattr(node, k) for k in node.keys if k != "loc"}
                nodes.append(definition(loc=node.loc, description=None, **fields))  # type: ignore[call-arg,arg-type]
                continue
        nodes.append(node)
    return gl.DocumentNode(definitions=tuple(nodes), loc=document.loc)


def load_schema(document: gl.DocumentNode) -> GraphQLSchema:
    """The schema a document defines, or `GraphQLFailure` with the first problem."""
    where = "GraphQL schema string"
    try:
        schema = build_ast_schema(_orphans_defined(document))
    except GraphQLError as exc:
        raise _failure(exc, where) from None
    except (TypeError, ValueError) as exc:
        raise GraphQLFailure(f"{_words(str(exc))} in {where}") from None
    # gqlparser requires no root query type (GraphQL spec §3.3.1 does, graphql-core too).
    problems = [e for e in validate_schema(schema) if not e.message.startswith("Query root type")]
    if problems:
        raise _failure(problems[0], where)
    return schema


def validate_query(schema: GraphQLSchema, document: gl.DocumentNode) -> None:
    """The spec's validation rules (§5), without graphql-core's demand for a valid root."""
    if not document.definitions:
        return
    errors: list[GraphQLError] = []
    type_info = TypeInfo(schema)
    context = ValidationContext(schema, document, type_info, errors.append)
    visitors = [rule(context) for rule in specified_rules]
    try:
        visit(document, TypeInfoVisitor(type_info, ParallelVisitor(visitors)))
    except RecursionError:
        raise GraphQLFailure("query nested too deeply in GraphQL query string") from None
    if errors:
        # OPA names the query as the GraphQL string here too.
        raise _failure(errors[0], "GraphQL string")
