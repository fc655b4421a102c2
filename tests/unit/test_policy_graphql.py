"""`graphql.*` builtins, against the outputs OPA gives in its own compliance cases
(`test/cases/testdata/v1/graphql*` in open-policy-agent/opa; the case each expectation
comes from is named beside it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError

MODULE = """
package g
import rego.v1

parse_query := graphql.parse_query(input.query)
parse_schema := graphql.parse_schema(input.schema)
parse := graphql.parse(input.query, input.schema)
parse_and_verify := graphql.parse_and_verify(input.query, input.schema)
is_valid := graphql.is_valid(input.query, input.schema)
schema_is_valid := graphql.schema_is_valid(input.schema)
"""

SCHEMA = """
  type Employee {
    id: String!
    salary: Int!
  }
  schema {
    query: Query
  }
  type Query {
    employeeByID(id: String): Employee
  }
"""


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine({"g.rego": MODULE})


def ask(engine: EmbeddedEngine, rule: str, **input: Any) -> Any:
    return engine.query(f"data.g.{rule}", json.dumps(input)).value


def failure(
    engine: EmbeddedEngine, rule: str, code: str = "eval_builtin_error", **input: Any
) -> PolicyEvaluationError:
    with pytest.raises(PolicyEvaluationError) as info:
        ask(engine, rule, **input)
    assert info.value.opa_code == code
    return info.value


def value(kind: int, raw: str, children: list[Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ExpectedTypeHasDefault": False, "Kind": kind, "Raw": raw}
    if children:
        out["Children"] = children
    return out


def test_parse_query_basic_ast(engine: EmbeddedEngine) -> None:
    # graphql_parse_query/success-basic-ast simple query
    assert ask(engine, "parse_query", query="{hero {name}}") == {
        "Operations": [
            {
                "Name": "",
                "Operation": "query",
                "SelectionSet": [
                    {
                        "Alias": "hero",
                        "Name": "hero",
                        "SelectionSet": [{"Alias": "name", "Name": "name"}],
                    }
                ],
            }
        ]
    }


def test_parse_query_variables_fragments_and_directives(engine: EmbeddedEngine) -> None:
    # graphql_parse_query/success-basic-ast inline fragments and type conditions,
    # .../success-types common types, .../success-variables can have directives
    query = (
        "query Q($ep: Episode!, $arr: [Arr!]!, $d: String @first) {"
        " hero(episode: $ep) { name ... on Droid { primary } ...F } }"
        " fragment F on Human { height @include(if: $ep) }"
    )
    assert ask(engine, "parse_query", query=query) == {
        "Fragments": [
            {
                "Name": "F",
                "SelectionSet": [
                    {
                        "Alias": "height",
                        "Directives": [
                            {
                                "Arguments": [{"Name": "if", "Value": value(0, "ep")}],
                                "Location": "",
                                "Name": "include",
                            }
                        ],
                        "Name": "height",
                    }
                ],
                "TypeCondition": "Human",
            }
        ],
        "Operations": [
            {
                "Name": "Q",
                "Operation": "query",
                "SelectionSet": [
                    {
                        "Alias": "hero",
                        "Arguments": [{"Name": "episode", "Value": value(0, "ep")}],
                        "Name": "hero",
                        "SelectionSet": [
                            {"Alias": "name", "Name": "name"},
                            {
                                "SelectionSet": [{"Alias": "primary", "Name": "primary"}],
                                "TypeCondition": "Droid",
                            },
                            {"Name": "F"},
                        ],
                    }
                ],
                "VariableDefinitions": [
                    {
                        "Type": {"NamedType": "Episode", "NonNull": True},
                        "Used": False,
                        "Variable": "ep",
                    },
                    {
                        "Type": {
                            "Elem": {"NamedType": "Arr", "NonNull": True},
                            "NamedType": "",
                            "NonNull": True,
                        },
                        "Used": False,
                        "Variable": "arr",
                    },
                    {
                        "Directives": [{"Location": "", "Name": "first"}],
                        "Type": {"NamedType": "String", "NonNull": False},
                        "Used": False,
                        "Variable": "d",
                    },
                ],
            }
        ],
    }


def test_parse_query_values(engine: EmbeddedEngine) -> None:
    # graphql_parse_query/success-variables are allowed in args, .../success-values strings,
    # .../success-large-queries kitchen sink (list, object, block string, null, enum)
    query = (
        '{ f(c: { a: { b: [ $var ] } }, long: """long""", short: "short",'
        " n: null, e: MOBILE, i: [123, 4.5], t: true) }"
    )
    arguments = ask(engine, "parse_query", query=query)["Operations"][0]["SelectionSet"][0][
        "Arguments"
    ]
    var_list = value(8, "", [{"Name": "", "Value": value(0, "var")}])
    assert arguments == [
        {
            "Name": "c",
            "Value": value(
                9, "", [{"Name": "a", "Value": value(9, "", [{"Name": "b", "Value": var_list}])}]
            ),
        },
        {"Name": "long", "Value": value(4, "long")},
        {"Name": "short", "Value": value(3, "short")},
        {"Name": "n", "Value": value(6, "null")},
        {"Name": "e", "Value": value(7, "MOBILE")},
        {
            "Name": "i",
            "Value": value(
                8,
                "",
                [{"Name": "", "Value": value(1, "123")}, {"Name": "", "Value": value(2, "4.5")}],
            ),
        },
        {"Name": "t", "Value": value(5, "true")},
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # graphql_parse_query/failure-* cases: OPA's messages, word for word.
        ("{", "Expected Name, found <EOF> in GraphQL string at location 1:2"),
        (
            "\n  { ...MissingOn }\n  fragment MissingOn Type\n",
            'Expected "on", found Name "Type" in GraphQL string at location 3:22',
        ),
        ("{ field: {} }", "Expected Name, found { in GraphQL string at location 1:10"),
        ("...", "Unexpected ... in GraphQL string at location 1:1"),
        (
            "query Foo($x: Complex = { a: { b: [ $var ] } }) { field }",
            "Unexpected $ in GraphQL string at location 1:37",
        ),
        (
            "{...{__typename{...{}}}}",
            "expected at least one definition, found } in GraphQL string at location 1:21",
        ),
        # A schema is not a query (gqlparser reads one language per document).
        ("type Query { a: Int }", 'Unexpected Name "type" in GraphQL string at location 1:1'),
    ],
)
def test_parse_query_errors_name_opa_message(
    engine: EmbeddedEngine, query: str, message: str
) -> None:
    assert f"graphql.parse_query: {message}" in str(failure(engine, "parse_query", query=query))


def test_parse_schema_shapes(engine: EmbeddedEngine) -> None:
    # graphql_parse_schema/success-* (object with block description and field argument
    # default, inheritance, unions, enums, input objects, directives, schema extension)
    schema = '''
      """
      Description
      """
      type Hello implements & Wo & rld @deprecated { world(flag: Boolean = true): String }
      union U = | Wo | Rld
      enum E { WO, RLD }
      input I { world: String }
      directive @foo repeatable on FIELD
      extend schema { mutation: Mutation }
      extend scalar Foo @deprecated
    '''
    string = {"NamedType": "String", "NonNull": False}
    assert ask(engine, "parse_schema", schema=schema) == {
        "Definitions": [
            {
                "BuiltIn": False,
                "Description": "Description",
                "Directives": [{"Location": "", "Name": "deprecated"}],
                "Fields": [
                    {
                        "Arguments": [
                            {
                                "DefaultValue": value(5, "true"),
                                "Description": "",
                                "Name": "flag",
                                "Type": {"NamedType": "Boolean", "NonNull": False},
                            }
                        ],
                        "Description": "",
                        "Name": "world",
                        "Type": string,
                    }
                ],
                "Interfaces": ["Wo", "rld"],
                "Kind": "OBJECT",
                "Name": "Hello",
            },
            {
                "BuiltIn": False,
                "Description": "",
                "Kind": "UNION",
                "Name": "U",
                "Types": ["Wo", "Rld"],
            },
            {
                "BuiltIn": False,
                "Description": "",
                "EnumValues": [
                    {"Description": "", "Name": "WO"},
                    {"Description": "", "Name": "RLD"},
                ],
                "Kind": "ENUM",
                "Name": "E",
            },
            {
                "BuiltIn": False,
                "Description": "",
                "Fields": [{"Description": "", "Name": "world", "Type": string}],
                "Kind": "INPUT_OBJECT",
                "Name": "I",
            },
        ],
        "Directives": [
            {"Description": "", "IsRepeatable": True, "Locations": ["FIELD"], "Name": "foo"}
        ],
        "Extensions": [
            {
                "BuiltIn": False,
                "Description": "",
                "Directives": [{"Location": "", "Name": "deprecated"}],
                "Kind": "SCALAR",
                "Name": "Foo",
            }
        ],
        "SchemaExtension": [
            {"Description": "", "OperationTypes": [{"Operation": "mutation", "Type": "Mutation"}]}
        ],
    }


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        # graphql_parse_schema/failure-* cases
        (
            "type Hello {}",
            "expected at least one definition, found } in GraphQL string at location 1:13",
        ),
        ("union Hello = || Wo | Rld", "Expected Name, found | in GraphQL string at location 1:16"),
        (
            '\n  "Description"\n  extend type Hello {\n    world: String\n  }\n',
            'Unexpected String "Description" in GraphQL string at location 2:4',
        ),
        (
            '\n  extend "Description" type Hello {\n    world: String\n  }\n',
            'Unexpected String "Description" in GraphQL string at location 2:11',
        ),
        # graphql_parse_schema/failure-fuzzer 2: an unterminated block string.
        ('"""\r', "Unexpected <Invalid> in GraphQL string at location 2:1"),
    ],
)
def test_parse_schema_errors_name_opa_message(
    engine: EmbeddedEngine, schema: str, message: str
) -> None:
    assert f"graphql.parse_schema: {message}" in str(failure(engine, "parse_schema", schema=schema))


def test_verification_follows_gqlparser(engine: EmbeddedEngine) -> None:
    query = '{ employeeByID(id: "alice") { salary } }'
    assert ask(engine, "is_valid", query=query, schema=SCHEMA) is True
    assert ask(engine, "is_valid", query="{ employeeByID { nope } }", schema=SCHEMA) is False
    valid, query_ast, schema_ast = ask(engine, "parse_and_verify", query=query, schema=SCHEMA)
    assert valid is True and query_ast == ask(engine, "parse_query", query=query)
    assert schema_ast == ask(engine, "parse_schema", schema=SCHEMA)
    assert ask(engine, "parse_and_verify", query="{ nope }", schema=SCHEMA) == [False, {}, {}]
    # graphql_*/success extending non-existent types: the extension defines the type.
    federated = """
      extend type User { id: ID! }
      union _Entity = User
      extend type Query { entity: _Entity }
    """
    assert ask(engine, "schema_is_valid", schema=federated) is True
    assert ask(engine, "is_valid", query="{ entity { ... on User { id } } }", schema=federated)
    # graphql_*/success deprecating types: no Query type, and the empty query is valid.
    assert ask(engine, "is_valid", query="", schema="enum E { A @deprecated }") is True
    # graphql_parse/failure validation rules are independent case 1
    required = "extend type Query { myAction(myEnum: Locale!): Int }\nenum Locale { EN }"
    message = str(failure(engine, "parse", query="query {\n  myAction\n}", schema=required))
    assert (
        'graphql.parse: Field "myAction" argument "myEnum" of type "Locale!" is required,'
        " but it was not provided in GraphQL string at location 2:3"
    ) in message


@pytest.mark.parametrize(
    "schema",
    [
        # graphql_schema_is_valid/failure-* cases
        "type Hello implements World { field: String }",
        "interface IA { id: ID! }\ninterface IIA implements IA { id: ID! }\n"
        "type A implements IIA { id: ID! }",
        "input Hello { world(foo: Int): String }",
        "directive @foo on FIELD | INCORRECT_LOCATION",
        "type Query { p: Pupil }\ntype Pupil { id: ID }\ninput PupilInput { friends: [Pupil] }",
        "extend schema",
    ],
)
def test_schema_is_valid_refuses_what_opa_refuses(engine: EmbeddedEngine, schema: str) -> None:
    assert ask(engine, "schema_is_valid", schema=schema) is False


def test_ast_objects_are_operands(engine: EmbeddedEngine) -> None:
    # graphql_*/success - AST objects - Employee example: an AST object stands for its text,
    # and comes back unchanged.
    query = '{ employeeByID(id: "alice") { salary } }'
    query_ast = ask(engine, "parse_query", query=query)
    schema_ast = ask(engine, "parse_schema", schema=SCHEMA)
    assert ask(engine, "is_valid", query=query_ast, schema=schema_ast) is True
    assert ask(engine, "schema_is_valid", schema=schema_ast) is True
    assert ask(engine, "parse", query=query_ast, schema=schema_ast) == [query_ast, schema_ast]
    # graphql_is_valid/undefined argument schema ast
    mutation = {
        "Operations": [
            {
                "Name": "",
                "Operation": "mutation",
                "SelectionSet": [
                    {
                        "Alias": "x",
                        "Arguments": [{"Name": "a", "Value": {"Kind": 7, "Raw": "b"}}],
                        "Name": "x",
                    }
                ],
            }
        ]
    }
    schema = ask(
        engine, "parse_schema", schema="type Query { bar: String! }\ntype Mutation { x: String! }"
    )
    assert ask(engine, "is_valid", query=mutation, schema=schema) is False
    # Not in gqlparser's shape: an error, never a guess.
    assert (
        ask(engine, "is_valid", query={"Operations": [{"SelectionSet": 1}]}, schema=schema) is False
    )
    assert "graphql.parse: AST object" in str(
        failure(
            engine, "parse", query={"Operations": [{"SelectionSet": [{"Alias": 1}]}]}, schema=schema
        )
    )
    # graphql.parse_query and graphql.parse_schema take text only (OPA's declarations).
    wrong = failure(engine, "parse_query", "eval_type_error", query=query_ast)
    assert "operand 1 must be string" in str(wrong)


def test_deep_nesting_is_refused_not_a_crash(engine: EmbeddedEngine) -> None:
    deep = "{ a " * 3000 + "}" * 3000
    assert "graphql.parse_query" in str(failure(engine, "parse_query", query=deep))
    assert ask(engine, "is_valid", query=deep, schema=SCHEMA) is False
