// Command kstatus prints what the real kstatus library (sigs.k8s.io/cli-utils pkg/kstatus/status,
// the health Flux, kpt and cli-utils compute) says of Kubernetes objects.
//
// It reads JSON on stdin: one object, or a List as `kubectl get -o json` prints it, decoded the way
// client-go decodes what the API server sends (integers stay int64, which kstatus's accessors need).
// It writes one JSON line per object, in order:
//
//	{"kind": "...", "namespace": "...", "name": "...", "status": "InProgress", "message": "..."}
//
// Built and cached by depgate.dev.gotools (tests/integration/test_kstatus.py runs it on policies the
// real operator wrote). Exit 1 on input it cannot decode or an object kstatus refuses.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func objects(data []byte) ([]*unstructured.Unstructured, error) {
	decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, data)
	if err != nil {
		return nil, err
	}
	switch obj := decoded.(type) {
	case *unstructured.UnstructuredList:
		out := make([]*unstructured.Unstructured, 0, len(obj.Items))
		for i := range obj.Items {
			out = append(out, &obj.Items[i])
		}
		return out, nil
	case *unstructured.Unstructured:
		return []*unstructured.Unstructured{obj}, nil
	}
	return nil, fmt.Errorf("not an object or a List: %T", decoded)
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	objs, err := objects(data)
	if err != nil {
		return fmt.Errorf("decoding stdin: %w", err)
	}
	enc := json.NewEncoder(out)
	for _, u := range objs {
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		line := result{u.GetKind(), u.GetNamespace(), u.GetName(), res.Status.String(), res.Message}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kubectl get <objects> -o json | kstatus")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
