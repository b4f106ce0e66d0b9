// Command argocdhealth runs an Argo CD resource health script (health.lua) under gopher-lua, the
// Lua Argo CD embeds, the way Argo CD's controller runs a health customization:
//
//   - a fresh state per object; with the standard libraries skipped (argocd-cm's default:
//     resource.customizations.useOpenLibs.<group_kind> unset), only the package, base and table
//     libraries and a safe os subset are opened; -open-libs opens them all, as Argo CD does when
//     that key is true and in its own health_test.yaml tests
//   - the object as the global `obj` (maps as tables, lists as sequences, numbers as numbers)
//   - one second for the script
//   - the returned table's `status` and `message` are the health; a status Argo CD does not know is
//     reported as Unknown, "Lua returned an invalid health status"; a nil return is an empty health
//
// It reads JSON on stdin (one object, or a List as `kubectl get -o json` prints it) and writes one
// JSON line {"status": "...", "message": "..."} per object. Exit 1 when the script fails or returns
// something Argo CD would refuse (not a table, a status or message that is not a string).
//
// Usage: argocdhealth [-open-libs] path/to/health.lua < objects.json
//
// Built and cached by depgate.dev.gotools; tests/integration/test_argocd_health.py runs it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// The health statuses Argo CD accepts from a script (gitops-engine's HealthStatusCode values).
var known = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// toLua turns a decoded JSON value into the Lua value a health script sees.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case []any:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// safeOs is the part of Lua's os library a health script may use: the time, never the process,
// the environment or files.
func safeOs(l *lua.LState) int {
	mod := l.RegisterModule(lua.OsLibName, map[string]lua.LGFunction{
		"time": func(l *lua.LState) int {
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		},
	})
	l.Push(mod)
	return 1
}

func field(t *lua.LTable, name string) (string, error) {
	switch v := t.RawGetString(name).(type) {
	case *lua.LNilType:
		return "", nil
	case lua.LString:
		return string(v), nil
	default:
		return "", fmt.Errorf("the returned table's %s is a %s, not a string", name, v.Type())
	}
}

func evaluate(script string, obj map[string]any, openLibs bool) (health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	if !openLibs {
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable},
			{lua.OsLibName, safeOs}} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
				lua.LString(lib.name)); err != nil {
				return health{}, err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	switch ret := l.Get(-1).(type) {
	case *lua.LNilType:
		return health{}, nil
	case *lua.LTable:
		status, err := field(ret, "status")
		if err != nil {
			return health{}, err
		}
		message, err := field(ret, "message")
		if err != nil {
			return health{}, err
		}
		if !known[status] {
			return health{"Unknown", "Lua returned an invalid health status"}, nil
		}
		return health{status, message}, nil
	default:
		return health{}, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
}

func objects(data []byte) ([]map[string]any, error) {
	decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, data)
	if err != nil {
		return nil, err
	}
	switch obj := decoded.(type) {
	case *unstructured.UnstructuredList:
		out := make([]map[string]any, 0, len(obj.Items))
		for _, item := range obj.Items {
			out = append(out, item.Object)
		}
		return out, nil
	case *unstructured.Unstructured:
		return []map[string]any{obj.Object}, nil
	}
	return nil, fmt.Errorf("not an object or a List: %T", decoded)
}

func run(args []string, in io.Reader, out io.Writer) error {
	flags := flag.NewFlagSet("argocdhealth", flag.ContinueOnError)
	openLibs := flags.Bool("open-libs", false, "open every standard Lua library (argocd-cm useOpenLibs: true)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if flags.NArg() != 1 {
		return fmt.Errorf("usage: argocdhealth [-open-libs] health.lua < objects.json")
	}
	script, err := os.ReadFile(flags.Arg(0))
	if err != nil {
		return err
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	objs, err := objects(data)
	if err != nil {
		return fmt.Errorf("decoding stdin: %w", err)
	}
	enc := json.NewEncoder(out)
	for _, obj := range objs {
		h, err := evaluate(string(script), obj, *openLibs)
		if err != nil {
			return err
		}
		if err := enc.Encode(h); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "argocdhealth:", err)
		os.Exit(1)
	}
}
