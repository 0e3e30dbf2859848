// probe is the program in the real node's test image (tests/cluster/node.py builds it static, with no
// libc, into a one-file OCI image). Each mode shows one thing a real container does:
//
//	probe whoami        print, as one JSON line: uid, gid, the pod's addresses, whether / is writable,
//	                    the API server's address and who it says we are (in-cluster config: the
//	                    kubernetes Service and the projected service-account token); exit 1 if that fails
//	probe oom           allocate and touch memory until the kernel kills the container
//	probe sleep SECONDS sleep
//	probe fail MESSAGE  write MESSAGE to /dev/termination-log and exit 3
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe whoami|oom|sleep SECONDS|fail MESSAGE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "whoami":
		os.Exit(whoami())
	case "oom":
		var chunks [][]byte
		for {
			chunk := make([]byte, 1<<20)
			for i := range chunk {
				chunk[i] = 1 // touch every page, so it is charged to the cgroup
			}
			chunks = append(chunks, chunk)
		}
	case "sleep":
		seconds, _ := strconv.Atoi(os.Args[2])
		fmt.Println("sleeping", seconds)
		time.Sleep(time.Duration(seconds) * time.Second)
	case "fail":
		_ = os.WriteFile("/dev/termination-log", []byte(os.Args[2]), 0o644)
		os.Exit(3)
	}
}

func whoami() int {
	report := map[string]any{"uid": os.Getuid(), "gid": os.Getgid(), "addresses": addresses()}
	err := os.WriteFile("/probe-write-test", nil, 0o644)
	report["rootWritable"] = err == nil
	report["server"] = net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	user, err := selfSubjectReview()
	report["user"] = user
	if err != nil {
		report["error"] = err.Error()
	}
	line, _ := json.Marshal(report)
	fmt.Println(string(line))
	if err != nil {
		return 1
	}
	return 0
}

func addresses() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok && !ipnet.IP.IsLoopback() && ipnet.IP.To4() != nil {
			out = append(out, ipnet.IP.String())
		}
	}
	return out
}

// selfSubjectReview asks the API server, as client-go's in-cluster config would reach it, who we are.
func selfSubjectReview() (string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "", err
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("%s: %s", resp.Status, data)
	}
	var review struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(data, &review); err != nil {
		return "", err
	}
	return review.Status.UserInfo.Username, nil
}
