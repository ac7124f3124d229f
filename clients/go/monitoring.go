package computesdk

import (
	"context"
	"iter"
	"time"

	monitoringv1 "github.com/computesdk/computesdk/clients/go/api/monitoring/v1"
)

// Usage is one sample of a sandbox's CPU, memory, disk, network and processes.
type Usage = monitoringv1.Usage

// HealthReport is the result of every health check of a sandbox.
type HealthReport = monitoringv1.CheckHealthResponse

// AlertThreshold raises an alert when a metric ("cpu", "memory", "disk")
// crosses Percent and clears it under ClearPercent.
type AlertThreshold = monitoringv1.AlertThreshold

// ScalingRule scales up when use stays above Threshold percent.
type ScalingRule = monitoringv1.ScalingRule

// Usage samples the sandbox's resource use now.
func (s *Sandbox) Usage(ctx context.Context) (*Usage, error) {
	resp, err := s.client.Raw.Monitoring.GetResourceUsage(ctx, &monitoringv1.GetResourceUsageRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return resp.GetUsage(), nil
}

// Monitor yields a sample every interval until ctx ends or the sandbox goes away.
func (s *Sandbox) Monitor(ctx context.Context, interval time.Duration, metrics ...string) iter.Seq2[*Usage, error] {
	return func(yield func(*Usage, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.client.Raw.Monitoring.Monitor(ctx, &monitoringv1.MonitorRequest{
			SandboxId: s.ID(), IntervalMs: uint32(interval.Milliseconds()), Metrics: metrics})
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			resp, err := st.Recv()
			if err != nil {
				if !isEOF(err) && ctx.Err() == nil {
					yield(nil, err)
				}
				return
			}
			if !yield(resp.GetUsage(), nil) {
				return
			}
		}
	}
}

// Limits are new caps; zero leaves a cap as it is.
type Limits struct {
	CPUPercent float64
	MemoryMB   uint64
	DiskMB     uint64
}

// SetResourceLimits changes caps on a running sandbox.
func (s *Sandbox) SetResourceLimits(ctx context.Context, l Limits) (Resources, error) {
	resp, err := s.client.Raw.Monitoring.SetResourceLimits(ctx, &monitoringv1.SetResourceLimitsRequest{
		SandboxId: s.ID(), CpuPercent: l.CPUPercent, MemoryMb: l.MemoryMB, DiskMb: l.DiskMB})
	if err != nil {
		return Resources{}, err
	}
	return resourcesFrom(resp.GetResources()), nil
}

// Scale sets CPU cores and memory; zero leaves one as it is.
func (s *Sandbox) Scale(ctx context.Context, cpuCores float64, memoryMB uint64) (Resources, error) {
	resp, err := s.client.Raw.Monitoring.Scale(ctx, &monitoringv1.ScaleRequest{
		SandboxId: s.ID(), CpuCores: cpuCores, MemoryMb: memoryMB})
	if err != nil {
		return Resources{}, err
	}
	return resourcesFrom(resp.GetResources()), nil
}

// SetAlertThresholds replaces the sandbox's alerts; each crossing is an "alert" event.
func (s *Sandbox) SetAlertThresholds(ctx context.Context, interval time.Duration, thresholds ...*AlertThreshold) error {
	_, err := s.client.Raw.Monitoring.SetAlertThresholds(ctx, &monitoringv1.SetAlertThresholdsRequest{
		SandboxId: s.ID(), Thresholds: thresholds, IntervalMs: uint32(interval.Milliseconds())})
	return err
}

// AutoScaling configures ConfigureAutoScaling.
type AutoScaling struct {
	Enabled     bool
	CPU         *ScalingRule
	Memory      *ScalingRule
	MaxCPUCores float64
	MaxMemoryMB uint64
	Cooldown    time.Duration
	Interval    time.Duration
}

// ConfigureAutoScaling turns automatic scaling on or off; each step is an "autoscale" event.
func (s *Sandbox) ConfigureAutoScaling(ctx context.Context, a AutoScaling) error {
	_, err := s.client.Raw.Monitoring.ConfigureAutoScaling(ctx, &monitoringv1.ConfigureAutoScalingRequest{
		SandboxId: s.ID(), Enabled: a.Enabled, Cpu: a.CPU, Memory: a.Memory, MaxCpuCores: a.MaxCPUCores,
		MaxMemoryMb: a.MaxMemoryMB, CooldownMs: uint32(a.Cooldown.Milliseconds()),
		IntervalMs: uint32(a.Interval.Milliseconds())})
	return err
}

// CheckHealth runs the built-in checks and every registered one now.
func (s *Sandbox) CheckHealth(ctx context.Context) (*HealthReport, error) {
	resp, err := s.client.Raw.Monitoring.CheckHealth(ctx, &monitoringv1.CheckHealthRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RegisterHealthCheck adds a command that passes when it exits 0; with an
// interval it also runs on its own, each run a "health" event.
func (s *Sandbox) RegisterHealthCheck(ctx context.Context, name, command string, interval, timeout time.Duration) error {
	_, err := s.client.Raw.Monitoring.RegisterHealthCheck(ctx, &monitoringv1.RegisterHealthCheckRequest{
		SandboxId: s.ID(), Name: name, Command: command,
		IntervalMs: uint32(interval.Milliseconds()), TimeoutMs: uint32(timeout.Milliseconds())})
	return err
}

// UnregisterHealthCheck removes a registered check.
func (s *Sandbox) UnregisterHealthCheck(ctx context.Context, name string) error {
	_, err := s.client.Raw.Monitoring.UnregisterHealthCheck(ctx, &monitoringv1.UnregisterHealthCheckRequest{
		SandboxId: s.ID(), Name: name})
	return err
}
